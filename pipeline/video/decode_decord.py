"""decord (the paper's loader), trusted only where it is proven exact.

decord returns pixels without their presentation times, so a wrong frame
cannot be caught per frame. On the frame-identity corpus it returned wrong
frames for HEVC (seeks across open GOPs), for MPEG-TS (the start time taken
as a shift; closed-GOP H.264 in .ts/.m2ts/.mts: every frame one GOP late while
its count and times match), for MP4 edit lists (hidden frames counted) and
for open-GOP H.264 read from a mid-file keyframe (one frame late); it was
exact on closed-GOP H.264 (MP4, F4V, MKV, FLV), VP9 (WebM) and MJPEG (AVI).
So the guard is cheap and up front: no MPEG-TS, the codec
on `decode.decord_codecs`, the packet index must show no open GOP, and
decord's frame count and times must equal the PyAV packet index (which
honours edit lists and start times). Anything else raises `NotExact` and the
exact PyAV path takes the file.

Only dmlc's decord 0.6.0 is trusted. The decord2 fork (3.4) gives up a skip
after 10000 polls of its decoder thread and returns whatever frame it holds,
without an error: on a busy machine, where that thread waits for a CPU, it
stored frames up to 250 positions early (10 of 1440 frames with two CPU hogs
beside it); 0.6.0 waits for the frames it counts and stored none wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import ModuleType

import numpy as np

from pipeline.video.decode_log import DecoderLog
from pipeline.video.decord_build import decord_problem
from pipeline.core.errors import NotExact, Reason, VideoError
from pipeline.video.frames import rotate_upright, scale_array
from pipeline.video.sampling import FrameIndex

_DECORD_IMPORT = threading.Lock()


def container_problem(container: str) -> str | None:
    """Why decord may not read a file in `container` (ffprobe's format name), or None."""
    if container == "mpegts":
        return "decord reads MPEG-TS (.ts/.m2ts/.mts) one GOP late"
    return None
_decord: ModuleType | None = None
_MAX_BATCH_FRAMES = 32  # more frames a call saves nothing measurable and only holds memory


def import_decord() -> ModuleType:
    """Import the trusted decord once, its bundled ffmpeg's logging quiet (it prints every packet warning).

    Under the lock, checked and imported as one step: decode workers start
    together, and a second thread must not see a half-imported module.
    """
    global _decord
    with _DECORD_IMPORT:
        if _decord is None:
            problem = decord_problem()
            if problem:
                raise NotExact(problem)
            import decord

            decord.logging.set_level(decord.logging.QUIET)
            _decord = decord
    return _decord


class ArrayFrame:
    __slots__ = ("index", "_rgb")

    def __init__(self, index: int, rgb: np.ndarray):
        self.index = index
        self._rgb = rgb

    def rgb(self, width: int, height: int, resample: str, scaler: str = "swscale") -> np.ndarray:
        return scale_array(self._rgb, width, height, resample, scaler)


class DecordBackend:
    """decord's seek-and-skip `get_batch` in bounded batches, over an index it must agree with.

    decord turns frames upright from the display matrix itself (the identity
    corpus' rotated files prove it); a build that returns coded orientation is
    detected from the frame shape and turned here.
    """

    name = "decord"

    def __init__(self, path: str, rotation_cw: int = 0, codec_threads: int = 1,
                 display_size: tuple[int, int] | None = None, batch_bytes: int = 32 << 20,
                 log: DecoderLog | None = None):
        decord = import_decord()
        self._rotation = rotation_cw
        self._display = display_size
        self._batch_bytes = batch_bytes
        self.log = log or DecoderLog()
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=max(1, codec_threads))
        except Exception as e:  # decord raises DECORDError / RuntimeError with C++ context
            raise VideoError(Reason.DECODE_FAILED, f"decord cannot open: {_short(e)}") from None
        self._index: FrameIndex | None = None

    def own_index(self) -> FrameIndex:
        n = len(self._vr)
        if n <= 0:
            raise VideoError(Reason.NO_DURATION, "decord counts no frames")
        try:
            pts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)[:, 0]
            keys = np.asarray(self._vr.get_key_indices(), dtype=np.int64)
        except Exception as e:
            raise VideoError(Reason.DECODE_FAILED, f"decord cannot index: {_short(e)}") from None
        keys = np.unique(np.concatenate([[0], keys[(keys >= 0) & (keys < n)]])).astype(np.int64)
        return FrameIndex(pts - pts[0], keys, float(self._vr.get_avg_fps()))

    def adopt_index(self, reference: FrameIndex) -> None:
        """Use `reference` (the PyAV packet index) if decord sees exactly the same frames at the same times."""
        own = self.own_index()
        if own.num_frames != reference.num_frames:
            raise NotExact(f"decord counts {own.num_frames} frames, the packet index {reference.num_frames}")
        step = 1.0 / reference.avg_fps if reference.avg_fps > 0 else 0.001
        worst = float(np.abs(own.pts_s - reference.pts_s).max())
        if worst > step / 4:
            raise NotExact(f"decord's frame times differ from the packet index by up to {worst:.3f}s")
        self._index = reference

    def frame_index(self) -> FrameIndex:
        if self._index is None:
            raise NotExact("decord has not been checked against the packet index")
        return self._index

    def share_index(self, other: "DecordBackend") -> None:
        self._index = other.frame_index()

    def _needs_turn(self, shape: tuple[int, ...]) -> bool:
        if self._rotation not in (90, 270) or self._display is None:
            return False
        w, h = self._display
        return w != h and tuple(shape[:2]) == (w, h)  # rows, cols still in coded orientation

    def read(self, positions: np.ndarray) -> Iterator[ArrayFrame]:
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
                yield ArrayFrame(pos, rotate_upright(arr, self._rotation) if turn else arr)
            del arrays

    def close(self) -> None:
        del self._vr


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]
