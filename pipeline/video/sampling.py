"""Which frames to take: pure functions from a video's frame index to frame positions and times.

Index modes reproduce the paper's loader exactly (LLaVA-NeXT
`process_video_with_decord`): `np.linspace(0, N-1, k, dtype=int)` (the int
cast truncates), or every `round(video_fps / fps)`-th frame with upper and
lower bounds that fall back to linspace. Time modes aim at presentation times
and pick the nearest frame, which stays right on variable-frame-rate files
where even index spacing is uneven in time. Keyframe seeking snaps every
target to the nearest keyframe and reports the error it made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.video.config_video import FrameSetConfig


@dataclass(frozen=True)
class FrameIndex:
    """Presentation times of every frame (seconds from the first, display order) and the keyframes among them."""

    pts_s: np.ndarray  # float64, non-decreasing, len == number of frames
    keyframes: np.ndarray  # int64 frame positions of keyframes, sorted; always contains 0
    avg_fps: float

    @property
    def num_frames(self) -> int:
        return int(len(self.pts_s))

    @property
    def duration_s(self) -> float:
        """Span from the first frame's start to the last frame's end (one average frame long)."""
        if self.num_frames == 0:
            return 0.0
        return float(self.pts_s[-1]) + (1.0 / self.avg_fps if self.avg_fps > 0 else 0.0)

    @property
    def keyframe_interval_s(self) -> float | None:
        """Mean spacing of the keyframes over the whole video (None with fewer than two)."""
        if len(self.keyframes) < 2:
            return None
        first, last = self.pts_s[self.keyframes[0]], self.pts_s[self.keyframes[-1]]
        return round(float(last - first) / (len(self.keyframes) - 1), 6)

    @classmethod
    def constant_rate(cls, num_frames: int, fps: float, keyframes: np.ndarray | None = None) -> "FrameIndex":
        kf = np.array([0], dtype=np.int64) if keyframes is None else np.asarray(keyframes, dtype=np.int64)
        return cls(np.arange(num_frames, dtype=np.float64) / fps, kf, fps)


@dataclass(frozen=True)
class SetPlan:
    """The frames one set will hold: positions (duplicates allowed, as linspace makes them) and aimed-at times."""

    name: str
    indices: np.ndarray  # int64, non-decreasing
    target_times_s: np.ndarray  # float64, same length
    mode: str = "uniform"  # the mode that made it (a per-sample frame count turns fps modes into uniform ones)
    stages: dict[int, np.ndarray] | None = None  # k -> positions in `indices` of linspace(0, N-1, k) (a union set)

    def picks(self, k: int | None) -> np.ndarray:
        """The frame indices stage k takes (all of `indices` for a set without stages)."""
        return self.indices[self.stages[k]] if self.stages and k in self.stages else self.indices

    def timestamps(self, index: FrameIndex) -> np.ndarray:
        return index.pts_s[self.indices]

    def errors(self, index: FrameIndex) -> np.ndarray:
        return np.abs(self.timestamps(index) - self.target_times_s)


# ----------------------------------------------------------- the paper's rules


def uniform_indices(num_frames: int, k: int) -> np.ndarray:
    """k frames uniform over [0, N-1], truncated to int exactly as the paper's `np.linspace(..., dtype=int)`."""
    if num_frames <= 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.linspace(0, num_frames - 1, k, dtype=int).astype(np.int64)


def fps_step(video_fps: float, sample_fps: float) -> int:
    """The paper's stride `round(video_fps / fps)`, guarded: it is 0 when fps exceeds twice the video's rate."""
    return max(1, round(video_fps / sample_fps))


def fps_indices(num_frames: int, video_fps: float, sample_fps: float, min_frames: int = 0, max_frames: int = 0) -> np.ndarray:
    """Every fps_step-th frame from 0; linspace(max_frames) if that is too many, linspace(min_frames) if too few."""
    idx = np.arange(0, num_frames, fps_step(video_fps, sample_fps), dtype=np.int64)
    if max_frames > 0 and len(idx) > max_frames:
        return uniform_indices(num_frames, max_frames)
    if min_frames > 0 and len(idx) < min_frames:
        return uniform_indices(num_frames, min_frames)
    return idx


# --------------------------------------------------------- presentation time


def time_uniform_targets(span_s: float, k: int) -> np.ndarray:
    """k times uniform over [0, span] (span: the last frame's time)."""
    return np.linspace(0.0, max(span_s, 0.0), k, dtype=np.float64) if k > 0 else np.zeros(0)


def time_fps_targets(span_s: float, fps: float, min_frames: int = 0, max_frames: int = 0) -> np.ndarray:
    """Times 0, 1/fps, 2/fps ... up to span; re-spread uniformly when outside the bounds."""
    n = int(np.floor(max(span_s, 0.0) * fps + 1e-9)) + 1
    if max_frames > 0 and n > max_frames:
        return time_uniform_targets(span_s, max_frames)
    if min_frames > 0 and n < min_frames:
        return time_uniform_targets(span_s, min_frames)
    return np.arange(n, dtype=np.float64) / fps


def nearest_frames(pts_s: np.ndarray, targets_s: np.ndarray) -> np.ndarray:
    """For each target time, the frame whose presentation time is nearest (ties go to the earlier frame)."""
    if len(pts_s) == 0:
        return np.zeros(len(targets_s), dtype=np.int64)
    right = np.clip(np.searchsorted(pts_s, targets_s, side="left"), 0, len(pts_s) - 1)
    left = np.clip(right - 1, 0, len(pts_s) - 1)
    take_left = np.abs(targets_s - pts_s[left]) <= np.abs(pts_s[right] - targets_s)
    return np.where(take_left, left, right).astype(np.int64)


def snap_to_keyframes(index: FrameIndex, targets_s: np.ndarray) -> np.ndarray:
    """For each target time, the nearest keyframe's position."""
    key_pts = index.pts_s[index.keyframes]
    return index.keyframes[nearest_frames(key_pts, targets_s)]


# --------------------------------------------------------------------- plans


def plan_frame_set(spec: FrameSetConfig, index: FrameIndex, num_frames_override: int | None = None) -> SetPlan:
    """Positions and target times for one frame set; a per-sample frame count overrides the mode (as in the paper)."""
    n = index.num_frames
    span = float(index.pts_s[-1]) if n else 0.0
    mode, count = spec.mode, spec.num_frames or 0
    if num_frames_override is not None:
        # The count replaces the set's own, in the set's own domain: frame indices or presentation time.
        if num_frames_override <= 0:
            raise ValueError(f"num_frames_override must be positive, got {num_frames_override}")
        mode, count = ("time_uniform" if mode.startswith("time_") else "uniform"), num_frames_override
    elif mode == "uniform" and spec.stage_frames:
        return _union_plan(spec, index)
    if mode == "uniform":
        indices = uniform_indices(n, count)
        targets = index.pts_s[indices]
    elif mode == "fps":
        indices = fps_indices(n, index.avg_fps, spec.fps or 1.0, spec.min_frames, spec.max_frames)
        targets = index.pts_s[indices]
    elif mode == "time_uniform":
        targets = time_uniform_targets(span, count)
        indices = nearest_frames(index.pts_s, targets)
    else:  # time_fps (the config's Literal allows no other)
        targets = time_fps_targets(span, spec.fps or 1.0, spec.min_frames, spec.max_frames)
        indices = nearest_frames(index.pts_s, targets)
    if spec.seek == "keyframe":
        indices = snap_to_keyframes(index, targets)
    return SetPlan(spec.name, np.asarray(indices, dtype=np.int64), np.asarray(targets, dtype=np.float64), mode)


def _union_plan(spec: FrameSetConfig, index: FrameIndex) -> SetPlan:
    """Every listed stage's (and num_frames') exact linspace frames, stored once each, with each stage's positions."""
    counts = sorted(set(spec.stage_frames) | {spec.num_frames or 0} - {0})
    picks = {k: uniform_indices(index.num_frames, k) for k in counts}
    indices = np.unique(np.concatenate(list(picks.values())))
    stages = {k: np.searchsorted(indices, p).astype(np.int64) for k, p in picks.items()}
    return SetPlan(spec.name, indices, index.pts_s[indices], "uniform", stages)
