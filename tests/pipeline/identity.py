"""Helpers of the frame-identity tests: the sampling sets every mode is checked with, and the check itself."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from fixtures import framecode
from fixtures.codec_corpus import CodedVideo
from pipeline.video.config_video import FrameSetConfig, ResizeConfig, SamplingConfig
from pipeline.core.records import DecodeResult
from pipeline.video.sampling import uniform_indices

SQUARE = ResizeConfig(policy="square", size=384, resample="bicubic")
SMALL = ResizeConfig(policy="short_side", size=224, resample="area", scaler="swscale")  # the caption set's


def every_mode() -> SamplingConfig:
    """One set per sampling mode, at the shard's and the caption set's sizes: decoded together in one pass."""
    return SamplingConfig(sets=[
        FrameSetConfig(name="u32", mode="uniform", num_frames=32, resize=SQUARE),
        FrameSetConfig(name="u128", mode="uniform", num_frames=128, resize=SQUARE, jpeg_quality=75),
        FrameSetConfig(name="u192", mode="uniform", num_frames=192, resize=SQUARE),
        FrameSetConfig(name="fps", mode="fps", fps=2.0, resize=SMALL, jpeg_quality=85),
        FrameSetConfig(name="time_uniform", mode="time_uniform", num_frames=40, resize=SMALL),
        FrameSetConfig(name="time_fps", mode="time_fps", fps=1.0, resize=SMALL, jpeg_quality=85),
        FrameSetConfig(name="keyframe", mode="uniform", num_frames=32, seek="keyframe", resize=SMALL),
    ])


@lru_cache(maxsize=4096)
def read_jpeg(jpeg: bytes) -> tuple[int, int] | None:
    """The code a stored JPEG shows, decoded at reduced scale (the cells are large)."""
    with Image.open(io.BytesIO(jpeg)) as img:
        img.draft("L", (img.width // 4, img.height // 4))
        return framecode.read(np.asarray(img.convert("L")))


def identity_problems(case: CodedVideo, result: DecodeResult) -> list[str]:
    """Every way the result's frames differ from what the case says a correct decoder returns (empty: exact)."""
    codes, times = case.expected()
    problems = []
    if result.num_frames != len(codes):
        problems.append(f"{result.decoder}: indexed {result.num_frames} frames, the file shows {len(codes)}")
    tolerance = case.min_interval_s / 4
    for name, fs in result.sets.items():
        if name.startswith("u") and fs.indices != uniform_indices(len(codes), int(name[1:])).tolist():
            problems.append(f"{name}: indices are not linspace(0, N-1, k) with N={len(codes)}")
        for pos, (idx, ts, jpeg) in enumerate(zip(fs.indices, fs.timestamps_s, fs.jpegs)):
            found = read_jpeg(jpeg)
            want = int(codes[idx]) if 0 <= idx < len(codes) else None
            if found is None:
                problems.append(f"{name}[{pos}]: index {idx}: no readable code")
            elif found != (want, case.turn):
                problems.append(f"{name}[{pos}]: index {idx} (frame {want}, turn {case.turn}) shows {found}")
            elif abs(ts - float(times[idx])) > tolerance:
                problems.append(f"{name}[{pos}]: index {idx} recorded at {ts:.4f}s, shown at {times[idx]:.4f}s")
    return problems
