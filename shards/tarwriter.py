"""Write one shard: webdataset's TarWriter into a temporary file, hashed on the fly, renamed when complete.

A reader never sees a partial tar: the file is `<name>.tar.partial` until it is
closed, flushed and renamed. The sha256 and size are computed from the bytes as
they are written (no second read).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds

from shards.layout import TMP_SUFFIX, sample_bytes

TAR_MTIME = 0.0  # fixed member times: the same samples give byte-identical shards


class _HashingFile:
    """A write-only file wrapper that feeds every byte to sha256."""

    def __init__(self, f: Any):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()


@dataclass
class ShardInfo:
    name: str
    sha256: str
    bytes: int
    samples: int


class ShardFile:
    """One tar being written. `close()` makes it visible; `abort()` removes it."""

    def __init__(self, directory: Path, name: str, fsync: bool = True):
        self.final = directory / name
        self.tmp = directory / (name + TMP_SUFFIX)
        self.fsync = fsync
        self._file = open(self.tmp, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = wds.TarWriter(self._hashing, encoder=False, mtime=TAR_MTIME)
        self.samples = 0
        self.payload = 0

    def write(self, sample: dict[str, Any]) -> None:
        self._tar.write(sample)
        self.samples += 1
        self.payload += sample_bytes(sample)

    def close(self) -> ShardInfo:
        self._tar.close()
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.final)
        return ShardInfo(self.final.name, self._hashing.sha.hexdigest(), self._hashing.size, self.samples)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
