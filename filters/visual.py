"""Cheap visual checks on frames the pipeline already sampled (no second decode).

From each video's `filters.visual.frame_set` frames (the 1 fps caption set by
default), decoded small and grey through libjpeg's DCT scaling: the share of
black or blank frames, brightness, sharpness (variance of the Laplacian),
motion (mean absolute difference of consecutive frames) and scene cuts (a
frame-difference detector). A still video has no motion; a slide show has
several scenes with no motion inside them (LLaVA-Video drops both). Every
score lands in `meta['scores']` (and the index); with `score_only` nothing is
dropped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.core.config_run import StageResources
from filters.config import VisualFilterConfig
from pipeline.core.errors import Reason, Verdict, VideoError
from pipeline.core.stage import Stage
from pipeline.core.task import VideoTask


def grey_small(jpeg: bytes, width: int) -> np.ndarray:
    """Luma at about `width` pixels wide; libjpeg decodes at 1/2, 1/4 or 1/8 scale directly (draft mode)."""
    img = Image.open(io.BytesIO(jpeg))
    img.draft("L", (width, max(1, width * img.height // max(img.width, 1))))
    return np.asarray(img.convert("L"), dtype=np.float32)


def laplacian_variance(grey: np.ndarray) -> float:
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    return float(lap.var())


@dataclass
class VisualScores:
    blank_ratio: float
    brightness: float
    sharpness: float
    motion: float  # median mean-absolute-difference of consecutive frames, 0-255
    scene_motion: float  # the same inside scenes (cuts left out)
    scenes: int
    frames: int

    COUNTS = ("scenes", "frames")  # how much was looked at, not how good it is: kept apart from the scores

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items() if k not in self.COUNTS}

    def counts(self) -> dict[str, int]:
        return {f"visual_{k}": int(getattr(self, k)) for k in self.COUNTS}


def visual_scores(jpegs: list[bytes], cfg: VisualFilterConfig) -> VisualScores:
    if not jpegs:
        raise VideoError(Reason.NO_FRAMES, f"frame set {cfg.frame_set!r} is empty")
    if len(jpegs) > cfg.max_frames:
        jpegs = [jpegs[i] for i in np.linspace(0, len(jpegs) - 1, cfg.max_frames, dtype=int)]
    frames = [grey_small(j, cfg.work_width) for j in jpegs]
    shape = frames[0].shape
    frames = [f if f.shape == shape else np.resize(f, shape) for f in frames]
    means = np.array([f.mean() for f in frames])
    stds = np.array([f.std() for f in frames])
    blank = (means < cfg.black_level) | (stds < cfg.blank_std)
    content = [f for f, b in zip(frames, blank) if not b]
    sharp = float(np.median([laplacian_variance(f) for f in content])) if content else 0.0
    diffs = np.array([np.abs(a - b).mean() for a, b in zip(frames[:-1], frames[1:])])
    cuts = diffs > cfg.cut_diff
    inside = diffs[~cuts]
    return VisualScores(
        blank_ratio=float(blank.mean()),
        brightness=float(means.mean()),
        sharpness=sharp,
        motion=float(np.median(diffs)) if len(diffs) else 0.0,
        scene_motion=float(np.median(inside)) if len(inside) else 0.0,
        scenes=int(cuts.sum()) + 1,
        frames=len(frames),
    )


def first_failure(s: VisualScores, cfg: VisualFilterConfig, duration_s: float) -> Verdict | None:
    """The cheapest-first order of the checks; the detail carries the score and its threshold."""
    if s.blank_ratio > cfg.max_blank_ratio:
        return Verdict(Reason.BLANK_FRAMES, f"blank_ratio {s.blank_ratio:.3f} > max_blank_ratio {cfg.max_blank_ratio:g}")
    if s.brightness < cfg.min_brightness:
        return Verdict(Reason.TOO_DARK, f"brightness {s.brightness:.1f} < min_brightness {cfg.min_brightness:g}")
    if s.brightness > cfg.max_brightness:
        return Verdict(Reason.TOO_BRIGHT, f"brightness {s.brightness:.1f} > max_brightness {cfg.max_brightness:g}")
    if s.frames > 1 and s.scenes == 1 and s.motion < cfg.min_motion:
        return Verdict(Reason.STATIC, f"motion {s.motion:.3f} < min_motion {cfg.min_motion:g}")
    per_minute = s.scenes / max(duration_s / 60, 1e-6)
    if s.scenes > 1 and s.scene_motion < cfg.min_motion:
        return Verdict(Reason.SLIDESHOW,
                       f"scene_motion {s.scene_motion:.3f} < min_motion {cfg.min_motion:g} over {s.scenes} scenes")
    if cfg.max_scenes_per_minute and per_minute > cfg.max_scenes_per_minute:
        return Verdict(Reason.TOO_MANY_CUTS, f"scenes_per_minute {per_minute:.1f} > max_scenes_per_minute {cfg.max_scenes_per_minute:g}")
    if s.sharpness < cfg.min_sharpness:
        return Verdict(Reason.BLURRY, f"sharpness {s.sharpness:.1f} < min_sharpness {cfg.min_sharpness:g}")
    return None


class VisualFilter(Stage):
    name = "visual_filter"
    reads = ("frames", "meta.video")
    writes = ("meta.scores", "meta.counts")

    def __init__(self, cfg: VisualFilterConfig, resources: StageResources | None = None):
        super().__init__(resources)
        self.cfg = cfg
        self.score_only = cfg.score_only

    def process(self, task: VideoTask) -> VideoTask:
        scores = visual_scores(task.frames.get(self.cfg.frame_set or "", []), self.cfg)
        task.meta.setdefault("scores", {}).update(scores.as_dict())
        task.meta.setdefault("counts", {}).update(scores.counts())
        failure = first_failure(scores, self.cfg, float(task.meta.get("video", {}).get("duration_s", 0.0)))
        if failure:
            raise failure
        return task
