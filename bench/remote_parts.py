"""Parts of bench/remote.py: counting the S3 server's requests (its access log) and this process's storage calls,
and decoding the default sampling's frames from a copy or through ranged reads."""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, unquote

import av
import numpy as np

from pipeline.core.storage import Storage

BUCKET = "bench"
KINDS = ("PUT", "POST", "HEAD", "GET", "DELETE", "LIST")
_REQUEST = re.compile(r'"([A-Z]+) /([^ ?"]*)\??([^ "]*) HTTP/[^"]*" (\d{3})')


# ------------------------------------------------------------------------------------------ counting requests


def server_requests(log_file: Path, since: int) -> list[tuple[str, str, str]]:
    """(kind, key, status) of each request on the bench bucket the server's access log shows since byte `since`:
    the kind is the method, or LIST for a listing page (its key: the prefix listed), or DELETE for a bulk delete
    (key "": its keys lie in the body, which the log does not show)."""
    with open(log_file, "rb") as f:
        f.seek(since)
        text = re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode(errors="replace"))
    found = []
    for method, path, query, status in _REQUEST.findall(text):
        bucket, _, key = unquote(path).partition("/")
        if bucket != BUCKET:
            continue
        args = parse_qs(query, keep_blank_values=True)
        if key:
            found.append((method, key, status))
        elif method == "GET" and "prefix" in args:
            found.append(("LIST", args["prefix"][0], status))
        elif method == "POST" and "delete" in args:
            found.append(("DELETE", "", status))
    return found


def under(requests: list[tuple[str, str, str]], *prefixes: str, bulk_deletes: bool = False
          ) -> list[tuple[str, str, str]]:
    """The requests on keys under any of `prefixes`, and with `bulk_deletes` the bulk deletes (whose keys the log
    does not show)."""
    return [r for r in requests if r[1].startswith(prefixes) or (bulk_deletes and r[0] == "DELETE" and not r[1])]


def by_kind(requests: list[tuple[str, str, str]]) -> dict[str, int]:
    """Requests by kind (KINDS' order, then any other method)."""
    counts = Counter(kind for kind, _, _ in requests)
    return {kind: counts[kind] for kind in (*KINDS, *sorted(set(counts) - set(KINDS)))}


def by_status(requests: list[tuple[str, str, str]]) -> dict[str, int]:
    return dict(sorted(Counter(f"{kind} {status}" for kind, _, status in requests).items()))


@contextmanager
def counted_storage() -> Iterator[dict[str, int]]:
    """Requests and bytes of every storage call this process makes meanwhile (a listing page is one request)."""
    counts = {"requests": 0, "bytes": 0}
    saved = {name: getattr(Storage, name) for name in ("get", "get_range", "head", "stream", "list_pages")}

    def whole(fn):
        def call(self, *args, **kwargs):
            out = fn(self, *args, **kwargs)
            counts["requests"] += 1
            counts["bytes"] += len(out) if isinstance(out, bytes) else 0
            return out
        return call

    def streamed(self, *args, **kwargs):
        counts["requests"] += 1
        for chunk in saved["stream"](self, *args, **kwargs):
            counts["bytes"] += len(chunk)
            yield chunk

    def paged(self, *args, **kwargs):
        for page in saved["list_pages"](self, *args, **kwargs):
            counts["requests"] += 1
            yield page

    for name in ("get", "get_range", "head"):
        setattr(Storage, name, whole(saved[name]))
    Storage.stream, Storage.list_pages = streamed, paged
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(Storage, name, fn)


# ----------------------------------------------------------------------------------------------- decoding


def sampling_times(path: Path) -> tuple[dict[str, np.ndarray], float]:
    """Seconds from the first frame of every default frame set (the file is constant-rate), and the mean
    spacing of the file's first keyframes."""
    from pipeline.run_config import load_run_config
    from pipeline.video.sampling import FrameIndex, plan_frame_set

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        index = FrameIndex.constant_rate(stream.frames, float(stream.average_rate))
        keys = []
        for packet in container.demux(stream):
            if packet.pts is not None and packet.is_keyframe:
                keys.append(float(packet.pts * stream.time_base))
            if len(keys) > 4:
                break
    sets = load_run_config(None, ["input.path=.", "output.dir=."]).sampling.sets
    times = {s.name: np.unique(plan_frame_set(s, index).timestamps(index)) for s in sets}
    times = {"default sets": np.unique(np.concatenate(list(times.values()))), **times}
    return times, float(np.mean(np.diff(keys))) if len(keys) > 1 else 0.0


def decode_at(source, times: np.ndarray, keyframe_s: float) -> int:
    """The first frame at or after each of `times` (sorted): a seek when the next time lies over a keyframe
    interval ahead, else decoding on. Returns the frames found."""
    got, last, frames = 0, -1.0, None
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        first = float((stream.start_time or 0) * stream.time_base)
        half = 0.5 / float(stream.average_rate)
        for ts in times:
            if frames is not None and ts <= last + half:
                got += 1
                continue
            if frames is None or ts > last + keyframe_s:
                container.seek(int((ts + first) / stream.time_base), stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                last = float(frame.time) - first
                if last >= ts - half:
                    got += 1
                    break
    return got


def request_ms(bucket: Storage, name: str, size: int, n: int = 16) -> float:
    """Median milliseconds of one 64 KiB ranged GET of this object: the server's own cost per request."""
    times = []
    for offset in np.linspace(0, size - (1 << 16), n, dtype=int):
        start = time.perf_counter()
        bucket.get_range(name, int(offset), int(offset) + (1 << 16))
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)
