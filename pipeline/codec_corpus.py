"""The frame-identity corpus: one frame-coded video per codec, container and timing case the README claims.

Every frame shows its own number (`framecode`), so any stored frame can be
checked against the index recorded for it. Each case knows the frame numbers
and presentation times a correct decoder must produce (`expected()`), worked
out from how the file is made, not from any decoder. Frames are generated small
as grey luma, piped to ffmpeg and scaled up with nearest-neighbour, so even the
4K case costs little to make. Files are made on demand and reused.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline import framecode
from pipeline.synth import SynthError, available_encoders, ffmpeg_binary

_BASE = (96, 54)  # frames are drawn at this size and scaled to the case's size
_X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18"]
_X265 = ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "20", "-x265-params", "log-level=error"]


@dataclass(frozen=True)
class CodedVideo:
    """How to make one frame-coded video, and what a correct decoder returns from it."""

    name: str
    ext: str
    codec_args: tuple[str, ...]
    frames: int = 150
    fps: str = "30"  # a rational, as ffmpeg's -r takes it
    size: tuple[int, int] = (320, 180)
    pix_fmt: str = "yuv420p"
    turn: int = 0  # clockwise turn the displayed frame shows (stored as display-matrix metadata)
    vfr: bool = False  # frames 0-49 at 10 fps, then `fps`
    ts_offset_s: float = 0.0  # the container's timestamps start here
    cut_s: float = 0.0  # remux from this time with -c copy (MP4: an edit list hides the frames before it)
    extra_out: tuple[str, ...] = ()  # more output options (movflags, interlacing)
    needs: tuple[str, ...] = field(default=())  # encoders that must exist

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.ext}"

    @property
    def rate(self) -> Fraction:
        return Fraction(self.fps)

    def time_of(self, code: np.ndarray) -> np.ndarray:
        """Presentation time (s) of the frame numbered `code` in the generated stream."""
        code = np.asarray(code, dtype=np.float64)
        rate = float(self.rate)
        if not self.vfr:
            return code / rate
        return np.where(code < 50, code / 10.0, 5.0 + (code - 50) / rate)

    def expected(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame numbers in display order, their times from the first shown frame) a correct decoder gives."""
        first = int(round(self.cut_s * float(self.rate))) if self.cut_s else 0
        codes = np.arange(first, self.frames, dtype=np.int64)
        times = self.time_of(codes)
        return codes, times - times[0]

    @property
    def min_interval_s(self) -> float:
        return 1.0 / max(float(self.rate), 10.0)


def _cases() -> list[CodedVideo]:
    x264_b = (*_X264, "-bf", "3")
    return [
        CodedVideo("h264_bframes_hugegop", "mp4", (*x264_b, "-g", "100000", "-sc_threshold", "0")),
        CodedVideo("h264_gop12", "mp4", (*x264_b, "-g", "12")),
        CodedVideo("h264_10bit", "mp4", (*x264_b, "-g", "50", "-profile:v", "high10"), pix_fmt="yuv420p10le"),
        CodedVideo("h264_faststart", "mp4", (*x264_b, "-g", "60"), extra_out=("-movflags", "+faststart")),
        CodedVideo("h264_open_gop", "mp4", (*x264_b, "-x264-params", "open-gop=1:keyint=30:min-keyint=30:scenecut=0")),
        CodedVideo("h264_editlist", "mp4", (*x264_b, "-g", "60"), frames=300, cut_s=2.5),
        CodedVideo("h264_fragmented", "mp4", (*x264_b, "-g", "30"),
                   extra_out=("-movflags", "frag_keyframe+empty_moov+default_base_moof")),
        CodedVideo("h264_start_offset", "mkv", (*x264_b, "-g", "45"), ts_offset_s=3.0),
        CodedVideo("h264_interlaced", "mp4", (*_X264, "-g", "30", "-flags", "+ildct+ilme", "-x264-params", "tff=1"),
                   size=(320, 240)),
        CodedVideo("h264_vfr", "mp4", (*x264_b, "-g", "40"), frames=200, vfr=True),
        CodedVideo("h264_rot90", "mp4", (*x264_b, "-g", "30"), turn=90),
        CodedVideo("h264_rot180", "mp4", (*x264_b, "-g", "30"), turn=180),
        CodedVideo("h264_rot270", "mp4", (*x264_b, "-g", "30"), turn=270),
        CodedVideo("h264_23976", "mp4", (*x264_b, "-g", "48"), fps="24000/1001"),
        CodedVideo("h264_60fps", "mp4", (*x264_b, "-g", "120"), frames=300, fps="60"),
        CodedVideo("h264_4k", "mp4", (*x264_b, "-g", "30"), frames=45, size=(3840, 2160)),
        CodedVideo("h264_long_30min", "mp4", (*x264_b, "-g", "250"), frames=18000, fps="10", size=(128, 72)),
        # x265's own defaults (keyint 250, open GOP, B-frames) over more than two GOPs: where seeking goes wrong
        CodedVideo("hevc_mkv", "mkv", _X265, frames=600, size=(640, 360)),
        CodedVideo("hevc_mp4", "mp4", (*_X265, "-tag:v", "hvc1"), frames=600),
        CodedVideo("hevc10_mkv", "mkv", _X265, frames=600, pix_fmt="yuv420p10le"),
        CodedVideo("hevc10_mp4", "mp4", (*_X265, "-tag:v", "hvc1"), frames=600, pix_fmt="yuv420p10le"),
        CodedVideo("vp9_webm", "webm", ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "20",
                                       "-b:v", "0", "-g", "60")),
        CodedVideo("av1_mp4", "mp4", ("-c:v", "libaom-av1", "-cpu-used", "8", "-crf", "20", "-g", "60",
                                     "-usage", "realtime")),
        CodedVideo("mpeg2_ts", "ts", ("-c:v", "mpeg2video", "-q:v", "2", "-g", "15", "-bf", "2")),
        CodedVideo("mjpeg_avi", "avi", ("-c:v", "mjpeg", "-q:v", "3")),
    ]


CORPUS: dict[str, CodedVideo] = {c.name: c for c in _cases()}


def encoder_of(case: CodedVideo) -> str:
    args = list(case.codec_args)
    return args[args.index("-c:v") + 1]


def can_make(case: CodedVideo) -> bool:
    return encoder_of(case) in available_encoders()


def _encode(case: CodedVideo, out: Path, timeout_s: float) -> None:
    w, h = _BASE
    rate = case.rate
    vf = [f"scale={case.size[0]}:{case.size[1]}:flags=neighbor"]
    if case.vfr:
        vf.append(f"setpts='round(if(lt(N,50),N/10,5+(N-50)*{rate.denominator}/{rate.numerator})/TB)'")
    cmd = [
        ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}", "-r", case.fps, "-i", "pipe:",
        "-vf", ",".join(vf), "-pix_fmt", case.pix_fmt, *case.codec_args, "-an",
    ]
    if case.vfr:
        cmd += ["-fps_mode", "passthrough", "-enc_time_base", "1/90000", "-video_track_timescale", "90000"]
    if case.ts_offset_s:
        cmd += ["-output_ts_offset", f"{case.ts_offset_s:g}"]
    cmd += [*case.extra_out, str(out)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for i in range(case.frames):
            proc.stdin.write(framecode.draw(i, w, h).tobytes())
        proc.stdin.close()
        err = proc.stderr.read()
        proc.wait(timeout=timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise SynthError(f"ffmpeg failed making {case.name}: {err.decode(errors='replace')[-400:]}")


def make_coded(case: CodedVideo, folder: Path, timeout_s: float = 600.0) -> Path:
    """The file for `case` under `folder`, made now if missing (written under a temporary name, then renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / case.filename
    if out.exists():
        return out
    tmp = folder / f".tmp-{case.name}.{case.ext}"
    if case.cut_s:
        whole = folder / f".whole-{case.name}.{case.ext}"
        _encode(case, whole, timeout_s)
        cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{case.cut_s:g}",
               "-i", str(whole), "-c", "copy", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
        whole.unlink(missing_ok=True)
        if done.returncode != 0:
            raise SynthError(f"ffmpeg failed cutting {case.name}: {done.stderr.decode(errors='replace')[-400:]}")
    else:
        _encode(case, tmp, timeout_s)
    if case.turn:  # ffmpeg 5.1 turns the legacy tag (here counter-clockwise) into a display matrix only when copying
        turned = folder / f".rot-{case.name}.{case.ext}"
        cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(tmp), "-c", "copy",
               "-metadata:s:v:0", f"rotate={(360 - case.turn) % 360}", str(turned)]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
        if done.returncode != 0:
            raise SynthError(f"ffmpeg failed rotating {case.name}: {done.stderr.decode(errors='replace')[-400:]}")
        turned.replace(tmp)
    tmp.rename(out)
    return out
