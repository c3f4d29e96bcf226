"""One-pass extraction on real generated videos: right frames, right times, both decoders, the fallback."""

import subprocess

import numpy as np
import pytest

from fixtures.videos import BAD_KINDS, CLOCK_RATE, ffmpeg_binary
from pipeline.video.config_video import DecodeConfig, FrameSetConfig, ProbeConfig, ResizeConfig, SamplingConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.video.extract import extract_frames
from pipeline.video.imageops import decode_jpeg
from pipeline.video.probe import preflight

NATIVE = ResizeConfig(policy="none")
BACKENDS = ["decord", "pyav"]


def sets(*specs: FrameSetConfig) -> SamplingConfig:
    return SamplingConfig(sets=list(specs))


def shown_time(jpeg: bytes) -> float:
    """When a clock-pattern frame was shown: its grey level (limited-range luma turned to RGB) encodes time."""
    grey = decode_jpeg(jpeg).astype(np.float64).mean()
    return (grey * 219 / 255) / CLOCK_RATE


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_frames_come_in_time_order_with_their_true_timestamps(video, backend):
    info = preflight(video("clock_10s"))
    result = extract_frames(
        info, sets(FrameSetConfig(name="s", num_frames=24, resize=NATIVE)), DecodeConfig(backend=backend, fallback="none")
    )
    fs = result.sets["s"]
    assert result.decoder == backend and result.fallback_reason is None
    assert fs.indices == np.linspace(0, 299, 24, dtype=int).tolist()
    np.testing.assert_allclose(fs.timestamps_s, np.asarray(fs.indices) / 30.0, atol=1e-3)
    seen = np.array([shown_time(j) for j in fs.jpegs])
    np.testing.assert_allclose(seen, fs.timestamps_s, atol=0.1)
    assert np.all(np.diff(seen) > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_mode_is_right_on_variable_frame_rate(video, backend):
    info = preflight(video("vfr_10s"))  # clock pattern: 10 fps for 5 s, then 30 fps
    spec_time = FrameSetConfig(name="by_time", mode="time_uniform", num_frames=9, resize=NATIVE)
    spec_index = FrameSetConfig(name="by_index", mode="uniform", num_frames=9, resize=NATIVE)
    result = extract_frames(info, sets(spec_time, spec_index), DecodeConfig(backend=backend, fallback="none"))
    by_time, by_index = result.sets["by_time"], result.sets["by_index"]
    # time mode: the frames shown at 0, 1.25, 2.5 ... 10 s (within a 10 fps frame)
    seen = np.array([shown_time(j) for j in by_time.jpegs])
    np.testing.assert_allclose(seen, by_time.target_times_s, atol=0.1 + 0.05)
    assert by_time.max_timestamp_error_s <= 0.05 + 1e-6
    # index mode: even in index, so uneven in time; its timestamps still tell the truth
    seen_index = np.array([shown_time(j) for j in by_index.jpegs])
    np.testing.assert_allclose(seen_index, by_index.timestamps_s, atol=0.1)
    assert sum(t < 5 for t in by_index.timestamps_s) == 3  # only a third of the frames in the first half


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyframe_mode_takes_only_keyframes_and_reports_its_error(video, backend):
    info = preflight(video("clock_10s"))  # a keyframe every 50 frames
    spec = FrameSetConfig(name="k", num_frames=12, seek="keyframe", resize=NATIVE)
    result = extract_frames(info, sets(spec), DecodeConfig(backend=backend, fallback="none"))
    fs = result.sets["k"]
    assert set(fs.indices) <= set(range(0, 300, 50))
    errors = np.abs(np.asarray(fs.timestamps_s) - np.asarray(fs.target_times_s))
    assert fs.max_timestamp_error_s == pytest.approx(errors.max(), abs=1e-5) and fs.max_timestamp_error_s > 0
    assert fs.mean_timestamp_error_s == pytest.approx(errors.mean(), abs=1e-5)
    seen = np.array([shown_time(j) for j in fs.jpegs])
    np.testing.assert_allclose(seen, fs.timestamps_s, atol=0.1)
    assert result.frames_decoded == len(set(fs.indices))


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_sets_from_one_pass(video, backend):
    info = preflight(video("h264_2min"))  # 256x144, 15 fps, 1800 frames
    shard = FrameSetConfig(name="shard", num_frames=192, resize=ResizeConfig(policy="square", size=384))
    caption = FrameSetConfig(name="caption", mode="time_fps", fps=1.0, resize=ResizeConfig(policy="short_side", size=112))
    result = extract_frames(info, sets(shard, caption), DecodeConfig(backend=backend))
    s, c = result.sets["shard"], result.sets["caption"]
    assert len(s) == 192 and len(c) == 120
    assert result.frames_decoded == len(set(s.indices) | set(c.indices))
    assert decode_jpeg(s.jpegs[0]).shape == (384, 384, 3) and (s.width, s.height) == (384, 384)
    assert decode_jpeg(c.jpegs[-1]).shape == (112, 199, 3) and (c.width, c.height) == (199, 112)
    np.testing.assert_allclose(c.timestamps_s, np.arange(120), atol=1 / 15)


def test_parallel_workers_give_the_same_frames_as_one(video):
    info = preflight(video("h264_2min"))  # keyframe every 60 frames: many groups to split
    spec = sets(FrameSetConfig(name="s", num_frames=64, resize=ResizeConfig(size=64)))
    one = extract_frames(info, spec, DecodeConfig(backend="pyav", threads=1)).sets["s"]
    four = extract_frames(info, spec, DecodeConfig(backend="pyav", threads=4)).sets["s"]
    assert one.indices == four.indices
    assert one.jpegs == four.jpegs


def test_backends_agree_on_pixels(video):
    info = preflight(video("h264_10s"))
    spec = sets(FrameSetConfig(name="s", num_frames=8, resize=NATIVE, jpeg_quality=95))
    frames = {
        b: [decode_jpeg(j).astype(int) for j in extract_frames(info, spec, DecodeConfig(backend=b)).sets["s"].jpegs]
        for b in BACKENDS
    }
    for a, b in zip(frames["decord"], frames["pyav"]):
        assert a.shape == b.shape == (180, 320, 3)
        assert np.abs(a - b).mean() < 3.0


def _ffmpeg_first_frame(path, out_png) -> np.ndarray:
    """ffmpeg's own autorotated first frame: the reference for upright."""
    subprocess.run(
        [ffmpeg_binary(), "-v", "error", "-y", "-i", str(path), "-frames:v", "1", str(out_png)], check=True, timeout=60
    )
    from PIL import Image

    return np.asarray(Image.open(out_png).convert("RGB")).astype(int)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotated_video_comes_out_upright(video, backend, tmp_path):
    path = video("rotated_10s")  # left half white before rotation
    info = preflight(path)
    result = extract_frames(info, sets(FrameSetConfig(name="s", num_frames=2, resize=NATIVE)), DecodeConfig(backend=backend, fallback="none"))
    frame = decode_jpeg(result.sets["s"].jpegs[0]).astype(int)
    reference = _ffmpeg_first_frame(path, tmp_path / "ref.png")
    assert frame.shape == reference.shape == (320, 180, 3)
    assert np.abs(frame - reference).mean() < 4.0
    halves = frame[:160].mean(), frame[160:].mean()
    assert abs(halves[0] - halves[1]) > 200  # the white half moved to the top or bottom: it was turned


def test_decord_falls_back_to_pyav_when_it_cannot_open(video):
    info = preflight(video("theora_10s"))  # decord cannot index Ogg
    spec = sets(FrameSetConfig(name="s", num_frames=16))
    result = extract_frames(info, spec, DecodeConfig(backend="decord", fallback="pyav"))
    assert result.decoder == "pyav"
    assert result.fallback_reason.startswith("decord:")
    assert len(result.sets["s"]) == 16
    with pytest.raises(VideoError) as err:  # not a codec decord is trusted with: refused before opening
        extract_frames(info, spec, DecodeConfig(backend="decord", fallback="none"))
    assert err.value.reason is Reason.FRAME_MISMATCH and "theora" in err.value.detail
    with pytest.raises(VideoError) as err:  # trusted with it by config: decord's own failure
        extract_frames(info, spec, DecodeConfig(backend="decord", fallback="none", decord_codecs=["theora"]))
    assert err.value.reason is Reason.DECODE_FAILED and "decord" in err.value.detail


def test_more_frames_than_the_video_has_repeats_frames_like_the_paper(video):
    info = preflight(video("clock_10s"))
    fs = extract_frames(info, sets(FrameSetConfig(name="s", num_frames=400, resize=ResizeConfig(size=32))), DecodeConfig()).sets["s"]
    assert len(fs) == 400 and fs.indices == np.linspace(0, 299, 400, dtype=int).tolist()
    assert fs.jpegs[0] is fs.jpegs[1]  # same frame, encoded once


def test_per_sample_frame_count_overrides_the_count_in_the_sets_own_domain(video):
    info = preflight(video("clock_10s"))
    timed = sets(FrameSetConfig(name="s", mode="time_fps", fps=1.0, resize=ResizeConfig(size=32)))
    fs = extract_frames(info, timed, DecodeConfig(), num_frames_override=5).sets["s"]
    # a time mode stays in time: 5 times uniform over [0, last frame's time], nearest frames, and says so
    assert fs.mode == "time_uniform" and fs.indices == [0, 75, 149, 224, 299]
    assert fs.target_times_s == pytest.approx(np.linspace(0, 299 / 30, 5).tolist())
    indexed = sets(FrameSetConfig(name="s", mode="fps", fps=1.0, resize=ResizeConfig(size=32)))
    fs = extract_frames(info, indexed, DecodeConfig(), num_frames_override=5).sets["s"]
    assert fs.mode == "uniform" and fs.indices == [0, 74, 149, 224, 299]  # the paper's linspace


def test_truncated_file_is_rejected_as_truncated_with_the_decoders_message(bad_file):
    info = preflight(bad_file("truncated"), ProbeConfig(check_tail=False))  # past the probe's own check
    for backend in ("pyav", "decord"):
        with pytest.raises(VideoError) as err:
            extract_frames(info, sets(FrameSetConfig(name="s", num_frames=32)), DecodeConfig(backend=backend))
        assert err.value.reason is Reason.TRUNCATED
        assert "of the 180 frames the header declares" in err.value.detail and "(decoder: " in err.value.detail


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_no_exception_but_video_error_escapes_on_bad_files(bad_file, kind):
    path = bad_file(kind)
    with pytest.raises(VideoError):
        info = preflight(path)
        extract_frames(info, SamplingConfig(), DecodeConfig())
