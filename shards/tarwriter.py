"""Write one shard: USTAR members appended with `os.writev`, hashed on a second thread, renamed when complete.

A reader never sees a partial tar: the file is `<name>.tar.partial` until it is
closed, flushed and renamed. sha256 and size come from the bytes as they are
written (no second read); hashing runs on its own thread (hashlib releases the
GIL), so it overlaps the writes. See `tarformat.py` for why the tar framing is
ours rather than webdataset's TarWriter; the archives are plain USTAR that
webdataset and tarfile read.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.sample import FORMAT_VERSION
from shards.layout import TMP_SUFFIX, sample_bytes
from shards.tarformat import end_of_archive, member_header, padding

TAR_MTIME = 0  # fixed member times: the same samples give byte-identical shards


class _Hasher(threading.Thread):
    """sha256 of everything queued, computed beside the writer."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="shard-sha256")
        self.sha = hashlib.sha256()
        self.queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=16)

    def run(self) -> None:
        while (bufs := self.queue.get()) is not None:
            # one update per sample: hashlib drops the GIL for it, where hundreds of small updates would
            # fight the writer thread for the GIL
            self.sha.update(b"".join(bufs))

    def digest(self) -> str:
        self.queue.put(None)
        self.join()
        return self.sha.hexdigest()


def _writev_all(fd: int, bufs: list[bytes]) -> int:
    total = sum(len(b) for b in bufs)
    done = 0
    while bufs:
        n = os.writev(fd, bufs[:1024])  # IOV_MAX
        done += n
        while bufs and n >= len(bufs[0]):  # drop what was written, keep the rest of a partly written buffer
            n -= len(bufs[0])
            bufs = bufs[1:]
        if bufs and n:
            bufs = [bufs[0][n:], *bufs[1:]]
    return total


@dataclass
class ShardInfo:
    name: str
    sha256: str
    bytes: int
    samples: int
    format_version: str = FORMAT_VERSION  # the sample format its samples are written in (`pipeline/core/sample.py`)


class ShardFile:
    """One tar being written. `close()` makes it visible; `abort()` removes it."""

    def __init__(self, directory: Path, name: str, fsync: bool = True):
        self.final = directory / name
        self.tmp = directory / (name + TMP_SUFFIX)
        self.fsync = fsync
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._hasher = _Hasher()
        self._hasher.start()
        self.size = 0
        self.samples = 0
        self.payload = 0

    def _append(self, bufs: list[bytes]) -> None:
        self._hasher.queue.put(bufs)
        self.size += _writev_all(self._fd, list(bufs))

    def write(self, sample: dict[str, Any]) -> None:
        """Members `<key>.<field>` in sorted field order (frames, then conversations.json, json), as webdataset writes them."""
        key = sample["__key__"]
        bufs: list[bytes] = []
        pad = b""
        for field in sorted(k for k in sample if k != "__key__"):
            data = sample[field]
            data = data.encode() if isinstance(data, str) else bytes(data)
            # the previous member's padding and this header travel as one small buffer: half the hash calls
            bufs += [pad + member_header(f"{key}.{field}", len(data), TAR_MTIME), data]
            pad = padding(len(data))
        if pad:
            bufs.append(pad)
        self._append(bufs)
        self.samples += 1
        self.payload += sample_bytes(sample)

    def close(self) -> ShardInfo:
        self._append([end_of_archive(self.size)])
        digest = self._hasher.digest()
        if self.fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        os.replace(self.tmp, self.final)
        return ShardInfo(self.final.name, digest, self.size, self.samples)

    def abort(self) -> None:
        try:
            os.close(self._fd)
            self._hasher.queue.put(None)
        finally:
            self.tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
