"""Decoder backends behind one small interface: decord (default) and PyAV (fallback).

A backend opens one file, reports its frame index (presentation time of every
frame, keyframe positions) and decodes a sorted list of frame positions,
yielding frames that convert themselves to upright, resized RGB on demand.
Only frames that are asked for are converted to pixels; the rest are decoded
and dropped. Several backends may be open on one file at once (one per
decode worker): nothing here is shared between instances.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Protocol

import numpy as np

from pipeline.errors import Reason, VideoError
from pipeline.imageops import RESAMPLE, resize_rgb
from pipeline.sampling import FrameIndex

_AV_INTERPOLATION = {name: name.upper() for name in RESAMPLE}


class DecodedFrame(Protocol):
    index: int

    def rgb(self, width: int, height: int, resample: str) -> np.ndarray:
        """The frame upright (rotation applied) as HxWx3 uint8 at (width, height)."""


class Backend(Protocol):
    name: str

    def frame_index(self) -> FrameIndex: ...

    def read(self, positions: np.ndarray) -> Iterator[DecodedFrame]:
        """Decode the frames at sorted, unique `positions`, in that order."""

    def close(self) -> None: ...


_DECORD_IMPORT = threading.Lock()


def import_decord() -> ModuleType:
    """Import decord without letting it preload every CUDA library pip installed beside torch.

    decord2 3.4 dlopens each `site-packages/nvidia/*/lib/*.so*` with RTLD_GLOBAL
    on import (meant for its CUDA wheels). Beside a CUDA build of torch that
    includes libnvblas, which takes over BLAS: the next matrix product in the
    process (torch, open_clip) dies. CPU decoding needs none of those
    libraries, so the `nvidia` package is hidden from that one lookup.
    """
    if "decord" in sys.modules:
        return sys.modules["decord"]
    with _DECORD_IMPORT:
        real_find_spec = importlib.util.find_spec

        def find_spec(name, package=None):
            return None if name == "nvidia" else real_find_spec(name, package)

        importlib.util.find_spec = find_spec
        try:
            import decord
        finally:
            importlib.util.find_spec = real_find_spec
    return decord


def _rotate_upright(rgb: np.ndarray, rotation_cw: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(rgb, k=-(rotation_cw // 90))) if rotation_cw else rgb


# ---------------------------------------------------------------------- PyAV


class _AVFrame:
    __slots__ = ("index", "_frame", "_rotation")

    def __init__(self, index: int, frame, rotation_cw: int):
        self.index = index
        self._frame = frame
        self._rotation = rotation_cw

    def rgb(self, width: int, height: int, resample: str) -> np.ndarray:
        # Scale and convert in one libswscale call, before rotating (cheaper than RGB at full size).
        w, h = (height, width) if self._rotation in (90, 270) else (width, height)
        arr = self._frame.to_ndarray(
            width=w, height=h, format="rgb24", interpolation=_AV_INTERPOLATION[resample]
        )
        return _rotate_upright(arr, self._rotation)


class PyAVBackend:
    """PyAV: exact presentation times from a demux pass, seeks only across keyframe gaps."""

    name = "pyav"

    def __init__(self, path: str, rotation_cw: int = 0, codec_threads: int = 1):
        import av

        self._av = av
        self._rotation = rotation_cw
        try:
            self._container = av.open(path)
        except av.error.FFmpegError as e:
            raise VideoError(Reason.NOT_MEDIA, f"pyav cannot open: {e}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(Reason.NO_VIDEO_STREAM, "pyav finds no video stream")
        self._stream = self._container.streams.video[0]
        if codec_threads > 1:
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.thread_count = codec_threads
        self._raw_pts: np.ndarray | None = None
        self._index: FrameIndex | None = None

    def frame_index(self) -> FrameIndex:
        if self._index is not None:
            return self._index
        pts, keys = [], []
        try:
            for pkt in self._container.demux(self._stream):
                t = pkt.pts if pkt.pts is not None else pkt.dts
                if t is None or pkt.size == 0:
                    continue
                pts.append(t)
                keys.append(pkt.is_keyframe)
        except self._av.error.FFmpegError as e:
            if not pts:
                raise VideoError(Reason.NOT_MEDIA, f"pyav cannot read packets: {e}") from None
            # A read error after some packets: index what is there; the caller compares with the header.
        if not pts:
            raise VideoError(Reason.NO_DURATION, "no video packets")
        raw = np.asarray(pts, dtype=np.int64)
        order = np.argsort(raw, kind="stable")
        raw = raw[order]
        keyframes = np.flatnonzero(np.asarray(keys, dtype=bool)[order]).astype(np.int64)
        if len(keyframes) == 0 or keyframes[0] != 0:
            keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
        tb = float(self._stream.time_base)
        rate = self._stream.average_rate
        pts_s = (raw - raw[0]) * tb
        avg_fps = float(rate) if rate else (len(raw) - 1) / pts_s[-1] if pts_s[-1] > 0 else 0.0
        self._raw_pts = raw
        self._index = FrameIndex(pts_s.astype(np.float64), keyframes, avg_fps)
        return self._index

    def share_index(self, other: "PyAVBackend") -> None:
        """Reuse another instance's demux pass over the same file."""
        self._index = other.frame_index()
        self._raw_pts = other._raw_pts

    def read(self, positions: np.ndarray) -> Iterator[DecodedFrame]:
        index = self.frame_index()
        raw = self._raw_pts
        av = self._av
        frames = None
        current = -1  # position of the last frame handed out (or decoded past)
        for target in positions.tolist():
            key = int(index.keyframes[np.searchsorted(index.keyframes, target, side="right") - 1])
            if frames is None or key > current or target <= current:
                # Seek only when a keyframe lies between here and the target: decoding on is cheaper.
                self._container.seek(int(raw[key]), stream=self._stream, backward=True, any_frame=False)
                frames = self._container.decode(self._stream)
            want = raw[target]
            try:
                for frame in frames:
                    fpts = frame.pts if frame.pts is not None else frame.dts
                    if fpts is None or fpts < want:
                        continue
                    current = target
                    yield _AVFrame(target, frame, self._rotation)
                    break
                else:
                    raise VideoError(
                        Reason.TRUNCATED,
                        f"stream ended before frame {target} of {index.num_frames} (t={index.pts_s[target]:.2f}s)",
                    )
            except av.error.FFmpegError as e:
                raise VideoError(Reason.DECODE_FAILED, f"pyav failed near frame {target}: {e}") from None

    def close(self) -> None:
        self._container.close()


# --------------------------------------------------------------------- decord


class _ArrayFrame:
    __slots__ = ("index", "_rgb")

    def __init__(self, index: int, rgb: np.ndarray):
        self.index = index
        self._rgb = rgb

    def rgb(self, width: int, height: int, resample: str) -> np.ndarray:
        return resize_rgb(self._rgb, (width, height), resample)


_MAX_BATCH_FRAMES = 32  # more frames a call saves nothing measurable and only holds memory


class DecordBackend:
    """decord (the paper's decoder): its own frame index and seek-and-skip `get_batch`, in bounded batches.

    decord2 turns frames upright from the display matrix itself (checked
    against ffmpeg's autorotate); a build that returns coded orientation is
    detected from the frame shape and turned here.
    """

    name = "decord"

    def __init__(
        self,
        path: str,
        rotation_cw: int = 0,
        codec_threads: int = 1,
        display_size: tuple[int, int] | None = None,
        batch_bytes: int = 32 << 20,
    ):
        decord = import_decord()

        self._rotation = rotation_cw
        self._display = display_size
        self._batch_bytes = batch_bytes
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=max(1, codec_threads))
        except Exception as e:  # decord raises DECORDError / RuntimeError with C++ context
            raise VideoError(Reason.DECODE_FAILED, f"decord cannot open: {_short(e)}") from None
        self._index: FrameIndex | None = None

    def frame_index(self) -> FrameIndex:
        if self._index is None:
            n = len(self._vr)
            if n <= 0:
                raise VideoError(Reason.NO_DURATION, "decord counts no frames")
            try:
                pts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)[:, 0]
                keys = np.asarray(self._vr.get_key_indices(), dtype=np.int64)
            except Exception as e:
                raise VideoError(Reason.DECODE_FAILED, f"decord cannot index: {_short(e)}") from None
            keys = np.unique(np.concatenate([[0], keys[(keys >= 0) & (keys < n)]])).astype(np.int64)
            self._index = FrameIndex(pts - pts[0], keys, float(self._vr.get_avg_fps()))
        return self._index

    def _needs_turn(self, shape: tuple[int, ...]) -> bool:
        if self._rotation not in (90, 270) or self._display is None:
            return False
        w, h = self._display
        return w != h and tuple(shape[:2]) == (w, h)  # rows, cols still in coded orientation

    def read(self, positions: np.ndarray) -> Iterator[DecodedFrame]:
        w, h = self._display or (1920, 1080)
        # decord's array and its numpy copy coexist: two batches' worth of pixels per worker.
        batch = int(np.clip(self._batch_bytes // (2 * w * h * 3), 1, _MAX_BATCH_FRAMES))
        for start in range(0, len(positions), batch):
            chunk = positions[start : start + batch].tolist()
            try:
                arrays = self._vr.get_batch(chunk).asnumpy()
            except Exception as e:
                raise VideoError(
                    Reason.DECODE_FAILED, f"decord failed on frames {chunk[0]}..{chunk[-1]}: {_short(e)}"
                ) from None
            turn = self._needs_turn(arrays.shape[1:])
            for pos, arr in zip(chunk, arrays):
                yield _ArrayFrame(pos, _rotate_upright(arr, self._rotation) if turn else arr)
            del arrays

    def close(self) -> None:
        del self._vr


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


BACKENDS = {"decord": DecordBackend, "pyav": PyAVBackend}
