"""The decoder interface and the backends behind it: PyAV (exact, the default) and decord (guarded).

A backend opens one file, reports its frame index (presentation time of every
shown frame, keyframe positions) and decodes a sorted list of frame positions,
yielding frames that convert themselves to upright, resized RGB on demand.
Several backends may be open on one file at once (one per decode worker):
nothing here is shared between instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from pipeline.video.decode_decord import DecordBackend, import_decord
from pipeline.video.decode_pyav import PyAVBackend
from pipeline.video.sampling import FrameIndex

__all__ = ["Backend", "DecodedFrame", "DecordBackend", "PyAVBackend", "import_decord"]


class DecodedFrame(Protocol):
    index: int

    def rgb(self, width: int, height: int, resample: str, scaler: str = "swscale") -> np.ndarray:
        """The frame upright (rotation applied) as HxWx3 uint8 at (width, height)."""


class Backend(Protocol):
    name: str

    def frame_index(self) -> FrameIndex: ...

    def read(self, positions: np.ndarray) -> Iterator[DecodedFrame]:
        """Decode the frames at sorted, unique `positions`, in that order; each is the frame its position names."""

    def close(self) -> None: ...
