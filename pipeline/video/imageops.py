"""Resize policies and JPEG encoding for sampled frames (Pillow, which ships libjpeg-turbo)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.video.config_video import ResizeConfig

RESAMPLE = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def output_size(width: int, height: int, resize: ResizeConfig) -> tuple[int, int]:
    """(width, height) a frame of the given upright size becomes under the policy.

    square: size x size, aspect not kept (what SigLIP's 384x384 processor does);
    short_side: the shorter side becomes `size`, aspect kept (never upscales past it);
    none: unchanged.
    """
    if resize.policy == "square":
        return resize.size, resize.size
    if resize.policy == "short_side":
        short = min(width, height)
        if short <= 0:
            raise ValueError(f"frame has no size: {width}x{height}")
        scale = resize.size / short
        return max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


def pil_resize(rgb: np.ndarray, width: int, height: int, resample: str) -> np.ndarray:
    """An HxWx3 uint8 array at (width, height) by PIL's filter on 8-bit RGB: SigLIP's processor, pixel for pixel."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), RESAMPLE[resample]))


def encode_jpeg(rgb: np.ndarray, quality: int = 90, subsampling: str = "4:2:0") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes back to an HxWx3 uint8 array (tests, filters, stats)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))
