import pytest

from fixtures.videos import SynthVideo, make_video
from pipeline.video.config_video import LimitsConfig, ProbeConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.video.probe import check_limits, preflight, probe_video


def test_h264_with_audio_is_described_fully(video):
    info = probe_video(video("h264_10s"))
    assert info.duration_s == pytest.approx(10.0, abs=0.05)
    assert (info.num_frames, info.num_frames_exact) == (300, True)
    assert info.avg_fps == pytest.approx(30.0) and info.real_fps == pytest.approx(30.0)
    assert not info.variable_frame_rate
    assert (info.width, info.height, info.rotation) == (320, 180, 0)
    assert (info.codec, info.pix_fmt, info.bit_depth) == ("h264", "yuv420p", 8)
    assert info.has_audio is True
    assert "mp4" in info.container
    assert info.size_bytes == video("h264_10s").stat().st_size
    assert info.keyframe_interval_s == pytest.approx(250 / 30, rel=0.01)  # libx264's default keyint


def test_no_audio_and_known_keyframe_spacing(video):
    info = probe_video(video("clock_10s"))  # keyint 50 at 30 fps
    assert info.has_audio is False
    assert info.keyframe_interval_s == pytest.approx(50 / 30, rel=0.01)


def test_ten_bit_depth(video):
    info = probe_video(video("h264_10bit"))
    assert info.bit_depth == 10 and info.pix_fmt.startswith("yuv420p10")


@pytest.mark.parametrize("name, codec", [("hevc_10s", "hevc"), ("vp9_10s", "vp9"), ("theora_10s", "theora")])
def test_other_codecs(video, name, codec):
    info = probe_video(video(name))
    assert info.codec == codec
    assert info.duration_s == pytest.approx(10.0, abs=0.1)
    assert abs(info.num_frames - 300) <= 1


def test_container_without_frame_count_is_estimated_unless_counted(video):
    info = probe_video(video("vp9_10s"))  # WebM stores no per-stream frame count
    assert info.num_frames_exact is False
    counted = probe_video(video("vp9_10s"), ProbeConfig(count_frames=True))
    assert counted.num_frames_exact is True and counted.num_frames == 300


def test_variable_frame_rate_is_detected(video):
    info = probe_video(video("vfr_10s"))  # 10 fps for 5 s, then 30 fps for 5 s
    assert info.variable_frame_rate
    assert info.num_frames == 200 and info.num_frames_exact
    assert info.avg_fps == pytest.approx(20.0, rel=0.02)
    assert info.real_fps == pytest.approx(30.0)


def test_rotation_swaps_display_size(video):
    info = probe_video(video("rotated_10s"))
    assert info.rotation in (90, 270)
    assert (info.coded_width, info.coded_height) == (320, 180)
    assert (info.width, info.height) == (180, 320)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("zero_byte", Reason.EMPTY_FILE),
        ("truncated_index", Reason.TRUNCATED),
        ("random_bytes", Reason.NOT_MEDIA),
        ("audio_only", Reason.NO_VIDEO_STREAM),
        ("png_as_mp4", Reason.STILL_IMAGE),
        ("unknown_codec", Reason.UNSUPPORTED_CODEC),
    ],
)
def test_bad_files_get_their_specific_reason(bad_file, kind, reason):
    with pytest.raises(VideoError) as err:
        preflight(bad_file(kind))
    assert err.value.reason is reason
    assert err.value.detail


def test_truncated_with_index_in_front_is_truncated_at_probe(bad_file):
    # The header is intact, but reading the declared last seconds finds the index pointing past the end.
    with pytest.raises(VideoError) as err:
        probe_video(bad_file("truncated"))
    assert err.value.reason is Reason.TRUNCATED
    # Without that check the header alone looks whole; extraction then compares it with what decodes.
    info = probe_video(bad_file("truncated"), ProbeConfig(check_tail=False))
    assert info.num_frames_exact and info.num_frames == 180


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(VideoError) as err:
        probe_video(tmp_path / "nope.mp4")
    assert err.value.reason is Reason.MISSING
    with pytest.raises(VideoError) as err:
        probe_video(tmp_path)
    assert err.value.reason is Reason.NOT_REGULAR_FILE and "is a folder" in err.value.detail


def test_probe_timeout_is_a_reason(video):
    # A real ffprobe, killed by a timeout it cannot meet.
    with pytest.raises(VideoError) as err:
        probe_video(video("h264_10s"), ProbeConfig(timeout_s=1e-4))
    assert err.value.reason is Reason.PROBE_TIMEOUT and "0.0001s" in err.value.detail


@pytest.mark.parametrize(
    "limits, reason",
    [
        (LimitsConfig(max_duration_s=5), Reason.TOO_LONG),
        (LimitsConfig(max_width=300), Reason.RESOLUTION_TOO_LARGE),
        (LimitsConfig(min_height=200), Reason.RESOLUTION_TOO_SMALL),
    ],
)
def test_limits(video, limits, reason):
    info = probe_video(video("h264_10s"))
    with pytest.raises(VideoError) as err:
        check_limits(info, limits)
    assert err.value.reason is reason
    check_limits(info, LimitsConfig())  # within the defaults


def test_limits_use_display_size(video):
    info = probe_video(video("rotated_10s"))  # coded 320x180, shown 180x320
    with pytest.raises(VideoError) as err:
        check_limits(info, LimitsConfig(max_height=300))
    assert err.value.reason is Reason.RESOLUTION_TOO_LARGE


def test_mpeg4_in_avi(tmp_path):
    path = make_video(SynthVideo("avi", duration_s=3, codec="mpeg4", audio=False), tmp_path)
    info = probe_video(path)
    assert info.codec == "mpeg4" and "avi" in info.container
    assert abs(info.num_frames - 90) <= 1
