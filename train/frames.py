"""Which stored frames a k-frame stage trains on, from what the sample's metadata records.

A shard made with `stage_frames` stores the union of the paper's
`linspace(0, N-1, k)` picks over the whole source video for every stage it
was told about, and records, per stage, where those frames sit among the
stored ones: such a stage gets exactly the paper's frames. Another k gets the
stored frames nearest to the paper's picks, and the largest offset (source
frames) is reported. A shard without that record gets `linspace` over the
stored frames. k above the stored count repeats frames, as the paper's loader
does for short videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.sample import SampleMeta
from pipeline.video.sampling import uniform_indices


@dataclass(frozen=True)
class FramePick:
    positions: list[int]  # into the stored frames, in time order (repeats allowed)
    exact: bool  # the paper's linspace(0, N-1, k) over the source video, or linspace over stored frames
    offset: int = 0  # largest |source frame taken - source frame the paper takes| (nearest picks)


def frame_indices(stored: int, k: int) -> np.ndarray:
    """The frames a k-frame stage takes from a sample storing `stored` with no per-stage record (uniform)."""
    return uniform_indices(stored, k)


def pick_frames(meta: SampleMeta, stored: int, k: int) -> FramePick:
    record = meta.stored_set()
    stage = record.stage(k) if record is not None else None
    if stage is not None:
        return FramePick(list(stage.positions), True)
    source_n = meta.decode.num_frames
    indices = record.indices if record is not None else []
    if record is None or not record.stages or not source_n or len(indices) != stored:
        return FramePick(frame_indices(stored, k).tolist(), True)
    have = np.asarray(indices, dtype=np.int64)
    want = uniform_indices(int(source_n), k)
    right = np.clip(np.searchsorted(have, want), 0, len(have) - 1)
    left = np.clip(right - 1, 0, len(have) - 1)
    nearest = np.where(np.abs(want - have[left]) <= np.abs(have[right] - want), left, right)
    offset = int(np.abs(have[nearest] - want).max()) if len(want) else 0
    return FramePick(nearest.tolist(), offset == 0, offset)
