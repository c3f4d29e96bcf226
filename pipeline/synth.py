"""Synthetic videos made with ffmpeg's lavfi sources: test fixtures, the demo's examples, the benchmarks' inputs.

Nothing here is checked into git: every file is generated on demand (and
reused when already present). ffmpeg runs as an argument list with a timeout.
Patterns:
  testsrc2  moving colour bars and a counter (ordinary content), optional tone;
  clock     flat grey whose level encodes time: luma = 16 + CLOCK_RATE * t,
            so a decoded frame tells when it was shown;
  halves    left half white, right half black: shows which way is up.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

CLOCK_RATE = 20.0  # luma levels per second in the clock pattern (10 s spans 16..216)

_CODECS = {
    # codec: (encoder, extra args, file extension)
    "h264": ("libx264", ["-preset", "ultrafast"], ".mp4"),
    "hevc": ("libx265", ["-preset", "ultrafast", "-x265-params", "log-level=error"], ".mp4"),
    "vp9": ("libvpx-vp9", ["-deadline", "realtime", "-cpu-used", "8"], ".webm"),
    "theora": ("libtheora", ["-q:v", "6"], ".ogv"),
    "mpeg4": ("mpeg4", ["-q:v", "5"], ".avi"),
}


class SynthError(RuntimeError):
    """ffmpeg could not make a requested video (missing encoder, failed run)."""


def ffmpeg_binary() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise SynthError("ffmpeg not found on PATH: install ffmpeg (Debian: apt-get install -y ffmpeg)")
    return exe


@lru_cache(maxsize=1)
def available_encoders() -> frozenset[str]:
    out = subprocess.run([ffmpeg_binary(), "-hide_banner", "-encoders"], capture_output=True, timeout=30, check=True)
    names = set()
    for line in out.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS":
            names.add(parts[1])
    return frozenset(names)


def can_encode(codec: str) -> bool:
    return _CODECS[codec][0] in available_encoders()


@dataclass(frozen=True)
class SynthVideo:
    """How to make one synthetic video."""

    name: str
    duration_s: float = 10.0
    width: int = 320
    height: int = 180
    fps: float = 30.0
    codec: str = "h264"
    audio: bool = True
    pattern: str = "testsrc2"
    rotate: int = 0  # clockwise degrees stored as display rotation
    vfr: bool = False  # first half at a third of the rate: 10 fps then 30 fps
    keyint: int | None = None  # frames between keyframes (encoder default when None)
    faststart: bool = False  # index (moov) at the front of mp4 files
    pix_fmt: str = "yuv420p"

    @property
    def filename(self) -> str:
        return self.name + _CODECS[self.codec][2]


def _video_source(v: SynthVideo) -> str:
    size, rate, dur = f"{v.width}x{v.height}", f"{v.fps:g}", f"{v.duration_s:g}"
    if v.pattern == "testsrc2":
        return f"testsrc2=size={size}:rate={rate}:duration={dur}"
    if v.pattern == "clock":
        return (
            f"nullsrc=size={size}:rate={rate}:duration={dur},format=yuv420p,"
            f"geq=lum='clip(16+{CLOCK_RATE:g}*T,16,235)':cb=128:cr=128"
        )
    if v.pattern == "halves":
        return (
            f"color=c=black:size={size}:rate={rate}:duration={dur},format=yuv420p,"
            f"drawbox=x=0:y=0:w={v.width // 2}:h={v.height}:color=white:t=fill"
        )
    if v.pattern == "mandelbrot":  # different content from testsrc2, with motion (a zooming fractal)
        return f"mandelbrot=size={size}:rate={rate},trim=duration={dur}"
    if v.pattern == "black":
        return f"color=c=black:size={size}:rate={rate}:duration={dur}"
    if v.pattern == "still":  # one image held for the whole video
        return f"smptebars=size={size}:rate={rate}:duration={dur}"
    if v.pattern == "blurred":
        return f"testsrc2=size={size}:rate={rate}:duration={dur},boxblur=6:2"
    if v.pattern == "slideshow":  # four still images, a quarter of the video each
        part = f"size={size}:rate={rate}:duration={v.duration_s / 4:g}"
        return (
            f"smptebars={part}[a];rgbtestsrc={part}[b];pal100bars={part}[c];"
            f"testsrc=size={size}:rate={rate}:duration=0.04,tpad=stop_mode=clone:stop_duration={v.duration_s / 4:g}[d];"
            "[a][b][c][d]concat=n=4[out0]"
        )
    raise ValueError(f"unknown pattern {v.pattern!r}")


def _run(cmd: list[str], timeout_s: float) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SynthError(f"ffmpeg timed out after {timeout_s:g}s: {' '.join(cmd)}") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise SynthError(f"ffmpeg failed ({done.returncode}): {' | '.join(tail)}")


def make_video(v: SynthVideo, out_dir: str | Path, timeout_s: float = 600.0) -> Path:
    """Generate `v` into out_dir (kept if already there) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / v.filename
    if target.exists() and target.stat().st_size > 0:
        return target
    encoder, enc_args, _ = _CODECS[v.codec]
    if not can_encode(v.codec):
        raise SynthError(f"this ffmpeg has no {encoder} encoder for {v.codec}")
    tmp = target.with_name(".tmp-" + target.name)
    cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", _video_source(v)]
    if v.audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=22050:duration={v.duration_s:g}"]
    if v.vfr:
        cmd += ["-vf", f"select='if(lt(t,{v.duration_s / 2:g}),not(mod(n,3)),1)'", "-fps_mode", "vfr"]
    cmd += ["-c:v", encoder, *enc_args]
    if v.codec != "theora":
        cmd += ["-pix_fmt", v.pix_fmt]
    if v.keyint:
        cmd += ["-g", str(v.keyint)]
        if encoder == "libx264":
            cmd += ["-x264-params", f"keyint={v.keyint}:min-keyint={v.keyint}:scenecut=0"]
    if v.audio:
        cmd += ["-c:a", "libvorbis" if v.codec in ("theora", "vp9") else "aac", "-shortest"]
    if v.faststart and target.suffix == ".mp4":
        cmd += ["-movflags", "+faststart"]
    cmd += ["-f", {".mp4": "mp4", ".webm": "webm", ".ogv": "ogg", ".avi": "avi"}[target.suffix], str(tmp)]
    _run(cmd, timeout_s)
    if v.rotate:
        # ffmpeg 5.1 stores the legacy rotate tag as a display matrix only when stream-copying.
        rotated = tmp.with_name(".rot-" + target.name)
        _run(
            [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(tmp), "-c", "copy",
             "-metadata:s:v:0", f"rotate={v.rotate % 360}", "-f", "mp4", str(rotated)],
            timeout_s,
        )
        tmp.unlink()
        rotated.replace(tmp)
    tmp.replace(target)
    return target


# ---------------------------------------------------------------- bad files

BAD_KINDS = ("zero_byte", "truncated", "truncated_index", "random_bytes", "audio_only", "png_as_mp4", "unknown_codec")


def make_bad_file(kind: str, out_dir: str | Path, timeout_s: float = 120.0) -> Path:
    """Generate one broken input of `kind` (see BAD_KINDS)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"bad_{kind}" if kind == "unknown_codec" else out_dir / f"bad_{kind}.mp4"
    if kind == "unknown_codec":
        target = target.with_suffix(".mkv")
    if target.exists():
        return target
    ff = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y"]
    if kind == "zero_byte":
        target.write_bytes(b"")
    elif kind == "random_bytes":
        target.write_bytes(random.Random(0).randbytes(200_000))
    elif kind in ("truncated", "truncated_index"):
        # truncated: index at the front, data cut: the header promises frames the file lacks.
        # truncated_index: index at the end, cut off with the tail: ffprobe finds no moov.
        good = make_video(
            SynthVideo(name=f"_whole_{kind}", duration_s=6, audio=False, faststart=kind == "truncated"), out_dir
        )
        data = good.read_bytes()
        target.write_bytes(data[: int(len(data) * 0.6)])
        good.unlink()
    elif kind == "audio_only":
        _run([*ff, "-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "aac", "-f", "mp4", str(target)], timeout_s)
    elif kind == "png_as_mp4":
        _run([*ff, "-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", "-f", "image2", "-c:v", "png", str(target)], timeout_s)
    elif kind == "unknown_codec":
        # A valid Matroska file whose codec id names no codec: probes fine, nothing can decode it.
        good = make_video(SynthVideo(name="_whole_unknown", duration_s=3, audio=False), out_dir)
        mkv = out_dir / "_whole_unknown.mkv"
        _run([*ff, "-i", str(good), "-c", "copy", str(mkv)], timeout_s)
        data = mkv.read_bytes()
        at = data.find(b"V_MPEG4/ISO/AVC")
        if at < 0:
            raise SynthError("codec id not found in the Matroska file")
        target.write_bytes(data[:at] + b"V_QZXWV/ISO/AVC" + data[at + 15 :])
        good.unlink()
        mkv.unlink()
    else:
        raise ValueError(f"unknown bad file kind {kind!r}; known: {', '.join(BAD_KINDS)}")
    return target


# ------------------------------------------------------------ named catalogue

CATALOGUE: dict[str, SynthVideo] = {
    v.name: v
    for v in [
        SynthVideo("h264_10s"),
        SynthVideo("h264_10s_noaudio", audio=False),
        SynthVideo("h264_10s_640x360", width=640, height=360),
        SynthVideo("h264_2min", duration_s=120, width=256, height=144, fps=15, keyint=60),
        SynthVideo("h264_5min", duration_s=300, width=256, height=144, fps=15, keyint=75),
        SynthVideo("hevc_10s", codec="hevc"),
        SynthVideo("vp9_10s", codec="vp9"),
        SynthVideo("theora_10s", codec="theora", audio=False),  # decord cannot index Ogg: exercises the PyAV fallback
        SynthVideo("vfr_10s", vfr=True, audio=False, pattern="clock"),
        SynthVideo("clock_10s", audio=False, pattern="clock", keyint=50),
        SynthVideo("rotated_10s", rotate=90, audio=False, pattern="halves", width=320, height=180),
        SynthVideo("halves_10s", audio=False, pattern="halves", width=320, height=180),
        # quality-filter fixtures: each made to fail one cheap visual check
        SynthVideo("black_20s", duration_s=20, audio=False, pattern="black"),
        SynthVideo("still_60s", duration_s=60, audio=False, pattern="still"),
        SynthVideo("slideshow_40s", duration_s=40, audio=False, pattern="slideshow"),
        SynthVideo("blurred_20s", duration_s=20, audio=False, pattern="blurred"),
        SynthVideo("testsrc2_20s", duration_s=20, audio=False),
        SynthVideo("mandelbrot_10s", audio=False, pattern="mandelbrot"),
        SynthVideo("h264_10bit", duration_s=4, audio=False, pix_fmt="yuv420p10le"),
    ]
}


def make_named(name: str, out_dir: str | Path, **changes) -> Path:
    """Generate a catalogue video by name, optionally with fields changed (the name must then change too)."""
    v = CATALOGUE[name]
    return make_video(replace(v, **changes) if changes else v, out_dir)
