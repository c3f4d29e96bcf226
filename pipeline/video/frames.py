"""Scaling decoded frames to a set's size, one way for every backend.

Both backends scale the same way for a given `scaler`, so a set's frames
(and every filter score computed from them) do not depend on which decoder
produced them. `swscale`: PyAV frames are scaled straight from their YUV
planes (scale and convert in one call, before turning upright); decord's RGB
arrays are wrapped as frames and scaled the same way. `pil`: the frame is
converted to RGB at full size (bit for bit what decord returns on the bench's
files) and resized by PIL on RGB, as SigLIP's image processor does in the
paper's loader.
"""

from __future__ import annotations

import threading

import numpy as np

from pipeline.video.imageops import RESAMPLE, pil_resize

_INTERPOLATION = {name: name.upper() for name in RESAMPLE}
_local = threading.local()


def rotate_upright(rgb: np.ndarray, rotation_cw: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(rgb, k=-(rotation_cw // 90))) if rotation_cw else rgb


def frame_rgb(frame, width: int, height: int, resample: str, rotation_cw: int = 0,
              scaler: str = "swscale") -> np.ndarray:
    """An av.VideoFrame as upright HxWx3 uint8 RGB at (width, height) (upright sizes), scaled by `scaler`."""
    if scaler == "pil":
        return pil_resize(rotate_upright(frame.to_ndarray(format="rgb24"), rotation_cw), width, height, resample)
    return swscale_rgb(frame, width, height, resample, rotation_cw)


def swscale_rgb(frame, width: int, height: int, resample: str, rotation_cw: int = 0) -> np.ndarray:
    """An av.VideoFrame as upright HxWx3 uint8 RGB at (width, height) (sizes are upright sizes)."""
    w, h = (height, width) if rotation_cw in (90, 270) else (width, height)
    arr = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation=_INTERPOLATION[resample])
    return rotate_upright(arr, rotation_cw)


def scale_array(rgb: np.ndarray, width: int, height: int, resample: str, scaler: str = "swscale") -> np.ndarray:
    """An upright HxWx3 uint8 array at (width, height), scaled as decoded frames are."""
    import av

    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    if scaler == "pil":
        return pil_resize(rgb, width, height, resample)
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:  # one per thread, its scaler context kept: a new one per frame churns the heap
        reformatter = _local.reformatter = av.video.reformatter.VideoReformatter()
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    out = reformatter.reformat(frame, width=width, height=height, format="rgb24",
                               interpolation=_INTERPOLATION[resample])
    return out.to_ndarray()
