"""Frames as OpenAI chat content parts: base64 JPEG image parts, or one base64 MP4 video part.

The frames are the JPEGs the decode stage already made for the caption frame
set, so captioning never reads the source video again. Resizing is optional
(`llm.captions.image_size`, long side); the video part is encoded with PyAV
at the frame set's rate for models served with video input.
"""

from __future__ import annotations

import base64
import io

import av
from PIL import Image


def _resized_jpeg(jpeg: bytes, long_side: int) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as im:
        if max(im.size) <= long_side:
            return jpeg
        im.draft("RGB", (long_side, long_side))  # DCT-domain downscale first: cheap
        im = im.convert("RGB")
        im.thumbnail((long_side, long_side), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=85)
        return out.getvalue()


def image_parts(jpegs: list[bytes], long_side: int = 0) -> list[dict]:
    parts = []
    for jpeg in jpegs:
        data = _resized_jpeg(jpeg, long_side) if long_side else jpeg
        url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def video_part(jpegs: list[bytes], fps: float, long_side: int = 0) -> dict:
    """The frames as one H.264 (or MPEG-4) MP4 in a data URL."""
    images = [Image.open(io.BytesIO(_resized_jpeg(j, long_side) if long_side else j)).convert("RGB") for j in jpegs]
    width, height = (d - d % 2 for d in images[0].size)  # yuv420p wants even sizes
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for im in images:
            frame = av.VideoFrame.from_image(im.crop((0, 0, width, height)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    url = "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"type": "video_url", "video_url": {"url": url}}
