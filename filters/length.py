"""Length filter: keep videos inside a duration bucket and frame-count range (from the probe, before any decode)."""

from __future__ import annotations

from pipeline.core.config_run import StageResources
from filters.config import LengthFilterConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.core.stage import Stage
from pipeline.core.task import VideoTask


class LengthFilter(Stage):
    name = "length_filter"
    reads = ("meta.video",)

    def __init__(self, cfg: LengthFilterConfig, resources: StageResources | None = None):
        super().__init__(resources)
        self.cfg = cfg

    def process(self, task: VideoTask) -> VideoTask:
        video = task.meta["video"]
        duration, frames = float(video["duration_s"]), int(video["num_frames"])
        c = self.cfg
        if duration < c.min_duration_s:
            raise VideoError(Reason.TOO_SHORT, f"{duration:.1f}s < min_duration_s {c.min_duration_s:g}")
        if c.max_duration_s is not None and duration > c.max_duration_s:
            raise VideoError(Reason.OUTSIDE_DURATION_BUCKET, f"{duration:.1f}s > max_duration_s {c.max_duration_s:g}")
        if frames < c.min_frames:
            raise VideoError(Reason.TOO_FEW_FRAMES, f"{frames} frames < min_frames {c.min_frames}")
        if c.max_frames and frames > c.max_frames:
            raise VideoError(Reason.TOO_MANY_FRAMES, f"{frames} frames > max_frames {c.max_frames}")
        return task
