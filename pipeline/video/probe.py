"""Probe and preflight: learn what a file is with ffprobe, and turn every problem into a specific reason.

ffprobe runs as an argument list (never a shell) with a timeout. ffmpeg-python's
`probe()` (0.2.0, the last release) takes no timeout, so the call is made here
with `subprocess.run(..., timeout=)`; the JSON is the same.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.video.config_video import LimitsConfig, ProbeConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.video.opened import OpenedSource, SourceRules, open_source
from pipeline.video.paths import INDIRECT_FORMATS, PROTOCOL_WHITELIST, indirect_format
from pipeline.core.records import VideoInfo

_IMAGE_FORMATS = re.compile(r"(_pipe$|^image2$|^apng$|^webp$)")


class ToolMissing(RuntimeError):
    """ffprobe/ffmpeg is not installed: an environment problem that must stop the run, not reject videos."""


def ffprobe_binary() -> str:
    exe = shutil.which("ffprobe")
    if exe is None:
        raise ToolMissing("ffprobe not found on PATH: install ffmpeg (Debian: apt-get install -y ffmpeg)")
    return exe


def ffmpeg_binary() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise ToolMissing("ffmpeg not found on PATH: install ffmpeg (Debian: apt-get install -y ffmpeg)")
    return exe


def run_ffprobe(source: OpenedSource, args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run ffprobe with `args` on the open `source` and return its JSON; failures become VideoError."""
    return run_ffprobe_logged(source, args, timeout_s)[0]


def run_ffprobe_logged(source: OpenedSource, args: list[str], timeout_s: float) -> tuple[dict[str, Any], str]:
    """`run_ffprobe`, also returning what ffprobe reported at error level.

    ffprobe reads the descriptor it inherits (`/proc/self/fd/N` in it names that open file), never the name.
    """
    cmd = [ffprobe_binary(), "-v", "error", "-of", "json", *args, "-protocol_whitelist", PROTOCOL_WHITELIST,
           "-i", source.path]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False, pass_fds=source.pass_fds)
    except subprocess.TimeoutExpired:
        raise VideoError(Reason.PROBE_TIMEOUT, f"ffprobe took longer than {timeout_s:g}s") from None
    err = source.shown(done.stderr.decode("utf-8", "replace").strip())
    if done.returncode != 0:
        raise _classify_ffprobe_error(err, _looks_like_mp4(source))
    try:
        return json.loads(done.stdout.decode("utf-8", "replace") or "{}"), err
    except json.JSONDecodeError as e:
        raise VideoError(Reason.NOT_MEDIA, f"ffprobe printed unparseable JSON: {e}") from None


def _looks_like_mp4(source: OpenedSource) -> bool:
    """An ISO-BMFF file starts with an `ftyp` box; random bytes named .mp4 do not."""
    try:
        return os.pread(source.fd, 12, 0)[4:8] == b"ftyp"
    except OSError:
        return False


def _classify_ffprobe_error(stderr: str, mp4_header: bool) -> VideoError:
    last = stderr.splitlines()[-1] if stderr else "ffprobe failed without a message"
    low = stderr.lower()
    # The source is read through its descriptor, so what an indirect demuxer names beside it is not found there.
    indirect = next((n for n in re.findall(r"^\[(\w+) @ 0x[0-9a-f]+\]", stderr, re.M) if n in INDIRECT_FORMATS), None)
    if indirect:
        return VideoError(Reason.INDIRECT_INPUT, f"a {indirect} file pulls in other inputs ({last[:200]})")
    if "moov atom not found" in low and mp4_header:
        return VideoError(Reason.TRUNCATED, "container index (moov) missing: file cut short or still being written")
    if "permission denied" in low:
        return VideoError(Reason.UNREADABLE, last)
    if "no such file" in low:
        return VideoError(Reason.MISSING, last)
    return VideoError(Reason.NOT_MEDIA, last[:300])


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text or "0/0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value)


def _float(value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0.0
    return f if f == f and f not in (float("inf"), float("-inf")) else 0.0


def _tag_duration(stream: dict[str, Any]) -> float:
    """A Matroska stream's `DURATION` tag ("HH:MM:SS.nnnnnnnnn") in seconds; 0 when absent."""
    tags = {k.upper(): v for k, v in (stream.get("tags") or {}).items()}
    m = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", str(tags.get("DURATION", "")).strip())
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else 0.0


def _rotation(stream: dict[str, Any]) -> int:
    """Clockwise degrees that turn a decoded frame upright (0/90/180/270)."""
    ccw = None
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            ccw = _float(side["rotation"])
    if ccw is None:
        tag = (stream.get("tags") or {}).get("rotate")
        if tag is None:
            return 0
        return int(round(_float(tag))) % 360  # the legacy tag is already clockwise
    # The display matrix angle is counter-clockwise.
    return int(round(-ccw / 90.0)) * 90 % 360


def _bit_depth(stream: dict[str, Any]) -> int:
    raw = stream.get("bits_per_raw_sample")
    if raw and str(raw).isdigit() and int(raw) > 0:
        return int(raw)
    m = re.search(r"p(\d{1,2})(le|be)?$", stream.get("pix_fmt") or "")
    return int(m.group(1)) if m else 8


def _pick_video_stream(streams: list[dict[str, Any]]) -> dict[str, Any] | None:
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        return None
    defaults = [s for s in videos if (s.get("disposition") or {}).get("default")]
    return (defaults or videos)[0]


def _stream_kind(stream: dict[str, Any]) -> str:
    kind = stream.get("codec_type", "?")
    if kind == "video" and (stream.get("disposition") or {}).get("attached_pic"):
        return "cover art (a still image)"
    return kind


def _decoder_available(codec: str) -> bool:
    import av  # local: keeps `import pipeline.video.probe` light for the CLI

    try:
        av.codec.Codec(codec, "r")
    except Exception:  # av raises UnknownCodecError / ValueError depending on version
        return False
    return True


def _keyframe_interval(source: OpenedSource, cfg: ProbeConfig) -> float | None:
    if cfg.keyframe_scan_s <= 0:
        return None
    data = run_ffprobe(
        source,
        [
            "-select_streams", "v:0",
            "-read_intervals", f"%+{cfg.keyframe_scan_s:g}",
            "-show_entries", "packet=pts_time,flags",
        ],
        cfg.timeout_s,
    )
    times = sorted(
        _float(p.get("pts_time"))
        for p in data.get("packets", [])
        if "K" in (p.get("flags") or "") and p.get("pts_time") not in (None, "N/A")
    )
    if len(times) < 2:
        return None
    return (times[-1] - times[0]) / (len(times) - 1)


def _check_tail(source: OpenedSource, start_s: float, duration_s: float, cfg: ProbeConfig) -> None:
    """Read the packets of the declared last seconds: a cut file has none there, or an index pointing past its end."""
    if not cfg.check_tail:
        return
    from_s = max(0.0, start_s + duration_s - 2.0)
    data, err = run_ffprobe_logged(
        source, ["-select_streams", "v:0", "-read_intervals", f"{from_s:.3f}%", "-show_entries", "packet=pts_time,duration_time"],
        cfg.timeout_s,
    )
    if "partial file" in err:
        raise VideoError(Reason.TRUNCATED, "the container's index lists video data past the end of the file (partial file)")
    ends = [_float(p.get("pts_time")) + _float(p.get("duration_time")) for p in data.get("packets", [])
            if p.get("pts_time") not in (None, "N/A")]
    if ends:
        last = max(ends) - start_s
        if last < duration_s - max(1.0, 0.05 * duration_s):
            raise VideoError(Reason.TRUNCATED, f"video packets end at {last:.2f}s of the {duration_s:.2f}s the header declares")


def _count_packets(source: OpenedSource, cfg: ProbeConfig) -> int:
    data = run_ffprobe(
        source,
        ["-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets"],
        cfg.timeout_s,
    )
    streams = data.get("streams") or [{}]
    return int(_float(streams[0].get("nb_read_packets")))


def probe_video(path: str | Path, cfg: ProbeConfig | None = None, rules: SourceRules | None = None) -> VideoInfo:
    """Everything ffprobe knows about `path`, or VideoError with the specific reason.

    The file is opened once (`open_source`, confined by `rules`) and every ffprobe run reads that open file; the
    result records its identity, which the decoder checks when it opens the source again.
    """
    with open_source(path, rules) as source:
        return _probe_opened(source, cfg or ProbeConfig())


def _probe_opened(source: OpenedSource, cfg: ProbeConfig) -> VideoInfo:
    size = source.identity.size
    if size == 0:
        raise VideoError(Reason.EMPTY_FILE, "0 bytes")

    data = run_ffprobe(source, ["-show_format", "-show_streams"], cfg.timeout_s)
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    container = fmt.get("format_name") or ""
    indirect = indirect_format(container)
    if indirect and not cfg.allow_indirect:
        raise VideoError(Reason.INDIRECT_INPUT, f"a {indirect} file pulls in other inputs (probe.allow_indirect is off)")
    if _IMAGE_FORMATS.search(container):
        raise VideoError(Reason.STILL_IMAGE, f"an image ({container}), not a video")
    stream = _pick_video_stream(streams)
    if stream is None:
        kinds = sorted({_stream_kind(s) for s in streams}) or ["none"]
        raise VideoError(Reason.NO_VIDEO_STREAM, f"streams present: {', '.join(kinds)}")

    codec = stream.get("codec_name") or "unknown"
    avg_fps = _rate(stream.get("avg_frame_rate"))
    real_fps = _rate(stream.get("r_frame_rate"))
    stream_duration = _float(stream.get("duration")) or _tag_duration(stream)
    duration = stream_duration or _float(fmt.get("duration"))
    nb_frames = int(_float(stream.get("nb_frames")))
    start = _float(stream.get("start_time")) or _float(fmt.get("start_time"))
    if "matroska" in container and 0 < start < duration:
        duration -= start  # Matroska durations run from the segment's zero, not from the first frame
    if avg_fps <= 0:
        avg_fps = nb_frames / duration if (nb_frames and duration) else real_fps
    if duration <= 0 and nb_frames > 0 and avg_fps > 0:
        duration = nb_frames / avg_fps
    if duration <= 0 and container == "mpegvideo" and avg_fps > 0:
        # a raw MPEG-1/2 stream (.m2v) states its rate but no duration: one packet per frame, so count them
        nb_frames = _count_packets(source, cfg)
        duration = nb_frames / avg_fps
    if duration <= 0:
        raise VideoError(Reason.NO_DURATION, f"duration is {fmt.get('duration', 'unknown')}")
    if avg_fps <= 0:
        raise VideoError(Reason.NO_DURATION, "no frame rate and no frame count")

    # A header count is exact only when it agrees with duration x rate: an MP4 edit list hides counted samples.
    exact = nb_frames > 0 and abs(nb_frames - duration * avg_fps) <= max(2.0, 0.02 * nb_frames)
    if nb_frames > 0 and not exact:
        nb_frames = 0
    if not exact and cfg.count_frames:
        nb_frames, exact = _count_packets(source, cfg), True
    if not exact:
        nb_frames = int(round(duration * avg_fps))
    if nb_frames <= 0:
        raise VideoError(Reason.NO_DURATION, "no frames")

    coded_w, coded_h = int(stream.get("width") or 0), int(stream.get("height") or 0)
    rotation = _rotation(stream)
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)

    if cfg.check_decoder and not _decoder_available(codec):
        raise VideoError(Reason.UNSUPPORTED_CODEC, f"no decoder for codec {codec!r}")
    _check_tail(source, start, duration, cfg)

    return VideoInfo(
        path=source.name,
        container=container,
        size_bytes=size,
        duration_s=duration,
        num_frames=nb_frames,
        num_frames_exact=exact,
        avg_fps=avg_fps,
        real_fps=real_fps,
        width=width,
        height=height,
        coded_width=coded_w,
        coded_height=coded_h,
        rotation=rotation,
        codec=codec,
        pix_fmt=stream.get("pix_fmt") or "unknown",
        bit_depth=_bit_depth(stream),
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        keyframe_interval_s=_keyframe_interval(source, cfg),
        duration_from_stream=stream_duration > 0,
        file_identity=source.identity.as_list(),
    )


def check_limits(info: VideoInfo, limits: LimitsConfig) -> None:
    """Raise VideoError when a probed video is outside the configured limits."""
    if info.duration_s > limits.max_duration_s:
        raise VideoError(Reason.TOO_LONG, f"{info.duration_s:.1f}s > max_duration_s {limits.max_duration_s:g}")
    if info.width > limits.max_width or info.height > limits.max_height:
        raise VideoError(
            Reason.RESOLUTION_TOO_LARGE,
            f"{info.width}x{info.height} > max {limits.max_width}x{limits.max_height}",
        )
    if info.width < limits.min_width or info.height < limits.min_height:
        raise VideoError(
            Reason.RESOLUTION_TOO_SMALL,
            f"{info.width}x{info.height} < min {limits.min_width}x{limits.min_height}",
        )


def preflight(path: str | Path, probe_cfg: ProbeConfig | None = None, limits: LimitsConfig | None = None,
              rules: SourceRules | None = None) -> VideoInfo:
    """Probe and check limits; the one call a stage makes before decoding."""
    info = probe_video(path, probe_cfg, rules)
    check_limits(info, limits or LimitsConfig())
    return info
