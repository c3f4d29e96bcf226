"""Our index plans against the paper's loader, over many (N, k, fps, bounds) cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.video.config_video import FrameSetConfig
from pipeline.video.extract import split_positions
from pipeline.video.sampling import (
    FrameIndex,
    fps_indices,
    nearest_frames,
    plan_frame_set,
    snap_to_keyframes,
    time_fps_targets,
    uniform_indices,
)


def paper_indices(total_frame_num, native_fps, video_fps, frames_upbound, frames_lowerbound, fixed_num_frames=0, sample_frames=0):
    """The paper's loader (LLaVA-NeXT process_video_with_decord, ProLongVid's fork), decord replaced by its two numbers.

    Written the way the original is (a list comprehension over range, linspace with
    dtype=int), with the one change docs/design.md asks for: the zero stride is guarded.
    """
    if sample_frames:
        return np.linspace(0, total_frame_num - 1, sample_frames, dtype=int).tolist()
    if fixed_num_frames:
        return np.linspace(0, total_frame_num - 1, fixed_num_frames, dtype=int).tolist()
    avg_fps = round(native_fps / video_fps)
    if avg_fps == 0:
        avg_fps = 1
    frame_idx = [i for i in range(0, total_frame_num, avg_fps)]
    if frames_upbound > 0 and len(frame_idx) > frames_upbound:
        frame_idx = np.linspace(0, total_frame_num - 1, frames_upbound, dtype=int).tolist()
    elif frames_lowerbound > 0 and len(frame_idx) < frames_lowerbound:
        frame_idx = np.linspace(0, total_frame_num - 1, frames_lowerbound, dtype=int).tolist()
    return frame_idx


def test_linspace_truncates_rather_than_rounds():
    # linspace(0, 9, 7) = 0, 1.5, 3, 4.5, 6, 7.5, 9: the int cast keeps 1, 4, 7 where rounding gives 2, 4, 8
    assert uniform_indices(10, 7).tolist() == [0, 1, 3, 4, 6, 7, 9]
    assert uniform_indices(100, 7).tolist() == [0, 16, 33, 49, 66, 82, 99]
    assert uniform_indices(5, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]  # more frames than the video: repeats


def test_fps_stride_is_pythons_round_with_the_zero_guard():
    assert fps_indices(100, 25.0, 2.0).tolist() == list(range(0, 100, 12))  # round(12.5) == 12 (half to even)
    assert fps_indices(100, 29.97, 1.0).tolist() == list(range(0, 100, 30))
    assert fps_indices(10, 10.0, 30.0).tolist() == list(range(10))  # round(1/3) == 0 would crash the paper's loader


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(1, 20000),
    native_fps=st.floats(1.0, 120.0),
    video_fps=st.floats(0.05, 60.0),
    upbound=st.integers(0, 400),
    lowerbound=st.integers(0, 64),
)
def test_fps_mode_matches_the_paper(n, native_fps, video_fps, upbound, lowerbound):
    if upbound and lowerbound > upbound:
        lowerbound = upbound
    spec = FrameSetConfig(name="s", mode="fps", fps=video_fps, min_frames=lowerbound, max_frames=upbound)
    plan = plan_frame_set(spec, FrameIndex.constant_rate(n, native_fps))
    assert plan.indices.tolist() == paper_indices(n, native_fps, video_fps, upbound, lowerbound)


@settings(max_examples=400, deadline=None)
@given(n=st.integers(1, 50000), k=st.integers(1, 512), fps=st.floats(1.0, 120.0))
def test_uniform_mode_and_per_sample_override_match_the_paper(n, k, fps):
    index = FrameIndex.constant_rate(n, fps)
    plan = plan_frame_set(FrameSetConfig(name="s", num_frames=k), index)
    expected = paper_indices(n, fps, 1.0, 0, 0, fixed_num_frames=k)
    assert plan.indices.tolist() == expected
    assert len(expected) == k and expected[0] == 0 and expected == sorted(expected)
    assert k == 1 or expected[-1] == n - 1
    # the paper's timestamps are index / avg_fps
    np.testing.assert_allclose(plan.timestamps(index), np.asarray(expected) / fps)
    # a per-sample frame count overrides any index mode (the paper's loader has no time modes)
    fps_spec = FrameSetConfig(name="s", mode="fps", fps=2.0)
    override = plan_frame_set(fps_spec, index, num_frames_override=k)
    assert override.indices.tolist() == expected and override.mode == "uniform"
    # ... and a time mode becomes time-uniform with that count, and says so
    timed = plan_frame_set(FrameSetConfig(name="s", mode="time_fps", fps=2.0), index, num_frames_override=k)
    assert timed.mode == "time_uniform" and len(timed.indices) == k


def test_time_modes_follow_presentation_time_on_variable_frame_rate():
    # 50 frames at 10 fps (0.0-4.9 s), then 150 at 30 fps (5.0-9.97 s): the vfr_10s fixture's layout
    pts = np.concatenate([np.arange(50) / 10.0, 5.0 + np.arange(150) / 30.0])
    index = FrameIndex(pts, np.array([0]), avg_fps=20.0)
    by_index = plan_frame_set(FrameSetConfig(name="s", num_frames=5), index)
    by_time = plan_frame_set(FrameSetConfig(name="s", mode="time_uniform", num_frames=5), index)
    # even in index: 0, 49, 99, 149, 199 -> 0, 4.9, 6.63, 8.3, 9.97 s (three quarters of the samples in the second half)
    np.testing.assert_allclose(by_index.timestamps(index), [0, 4.9, 5 + 49 / 30, 5 + 99 / 30, 5 + 149 / 30])
    # even in time: 0, 2.49, 4.98, 7.48, 9.97 s, each within half a frame of its target
    assert np.all(by_time.errors(index) <= 0.5 / 10 + 1e-9)
    np.testing.assert_allclose(by_time.target_times_s, np.linspace(0, pts[-1], 5))


def test_time_fps_targets_and_bounds():
    assert time_fps_targets(9.967, 1.0).tolist() == [float(i) for i in range(10)]
    assert time_fps_targets(10.0, 1.0).tolist() == [float(i) for i in range(11)]
    assert len(time_fps_targets(7200.0, 1.0, max_frames=512)) == 512
    assert len(time_fps_targets(3.0, 1.0, min_frames=8)) == 8


@settings(max_examples=200, deadline=None)
@given(
    pts=st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=300).map(sorted),
    targets=st.lists(st.floats(-10, 1010, allow_nan=False), min_size=1, max_size=50),
)
def test_nearest_frames_is_nearest(pts, targets):
    pts_a, t_a = np.asarray(pts), np.asarray(targets)
    got = nearest_frames(pts_a, t_a)
    best = np.abs(pts_a[None, :] - t_a[:, None]).min(axis=1)
    np.testing.assert_allclose(np.abs(pts_a[got] - t_a), best)


def test_keyframe_mode_snaps_to_the_nearest_keyframe_and_reports_the_error():
    index = FrameIndex.constant_rate(300, 30.0, keyframes=np.arange(0, 300, 50))  # keyframe every 1.667 s
    plan = plan_frame_set(FrameSetConfig(name="s", num_frames=7, seek="keyframe"), index)
    assert set(plan.indices.tolist()) <= set(range(0, 300, 50))
    np.testing.assert_allclose(plan.target_times_s, uniform_indices(300, 7) / 30.0)
    key_times = np.arange(0, 300, 50) / 30.0
    expected_err = np.abs(key_times[None, :] - plan.target_times_s[:, None]).min(axis=1)
    np.testing.assert_allclose(plan.errors(index), expected_err)
    inside = plan.target_times_s <= key_times[-1]
    assert plan.errors(index)[inside].max() <= 25 / 30.0 + 1e-9  # at most half a keyframe gap between keyframes
    assert snap_to_keyframes(index, np.array([0.8, 0.9])).tolist() == [0, 50]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5000),
    k=st.integers(1, 300),
    gop=st.integers(1, 400),
    parts=st.integers(1, 8),
)
def test_split_positions_keeps_every_position_once_in_whole_keyframe_groups(n, k, gop, parts):
    positions = np.unique(uniform_indices(n, k))
    keyframes = np.arange(0, n, gop)
    spans = split_positions(positions, keyframes, parts)
    assert 1 <= len(spans) <= parts
    assert np.concatenate(spans).tolist() == positions.tolist()
    groups = [set((np.searchsorted(keyframes, s, side="right") - 1).tolist()) for s in spans]
    for a, b in zip(groups, groups[1:]):
        assert max(a) < min(b)  # no keyframe group is decoded by two workers


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 20000), st.lists(st.integers(1, 300), min_size=1, max_size=4))
def test_a_union_set_holds_every_stages_paper_frames(n, stage_frames):
    spec = FrameSetConfig(name="shard", mode="uniform", num_frames=max(stage_frames), stage_frames=stage_frames)
    plan = plan_frame_set(spec, FrameIndex.constant_rate(n, 30.0))
    assert (np.diff(plan.indices) > 0).all()  # each stored frame once, in time order
    for k in set(stage_frames):
        assert plan.indices[plan.stages[k]].tolist() == paper_indices(n, 30.0, 1.0, 0, 0, fixed_num_frames=k)
    union = set().union(*(paper_indices(n, 30.0, 1.0, 0, 0, fixed_num_frames=k) for k in stage_frames))
    assert sorted(union) == plan.indices.tolist()
    # a per-sample frame count overrides the set: one pick, no stages (the paper's per-sample count)
    assert plan_frame_set(spec, FrameIndex.constant_rate(n, 30.0), num_frames_override=7).stages is None


def test_stage_frames_need_the_uniform_exact_mode():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="stage_frames"):
        FrameSetConfig(name="shard", mode="time_uniform", num_frames=192, stage_frames=[32])
    with pytest.raises(ValidationError, match="stage_frames"):
        FrameSetConfig(name="shard", mode="uniform", num_frames=192, stage_frames=[32], seek="keyframe")


def test_keyframe_spacing_is_the_mean_over_the_whole_index():
    assert FrameIndex.constant_rate(300, 30.0, keyframes=np.arange(0, 300, 50)).keyframe_interval_s == pytest.approx(50 / 30)
    assert FrameIndex.constant_rate(300, 30.0).keyframe_interval_s is None  # only frame 0 known: no spacing
