"""`prolongvid audit RUN_DIR`: re-decode stored frames from their source videos with ffmpeg and compare.

The check a user can run on a real corpus, which carries no frame codes: for
each audited sample, every stored frame is decoded again by the ffmpeg command
line (an independent decoder), picked by presentation time (`-ss` before `-i`
is frame-accurate: ffmpeg decodes from the keyframe before and drops frames
shown before the time), scaled to the stored size the way the pipeline scales,
and compared by luma PSNR. A frame below `min_psnr` is not the frame its index
names. Frames of a still scene look alike whichever is stored; the PSNR only
catches a wrong frame where the picture changes, which is where it matters.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import Reason, VideoError
from pipeline.video.extract import available_cpus
from pipeline.video.frames import frame_rgb
from pipeline.video.imageops import decode_jpeg
from pipeline.video.config_video import FetchConfig
from pipeline.video.fetch import fetch, is_http
from pipeline.video.opened import Identity, OpenedSource, SourceRules, open_source, url_prefixes
from pipeline.video.paths import PROTOCOL_WHITELIST
from pipeline.video.probe import ffmpeg_binary, ffprobe_binary, run_ffprobe
from pipeline.core.sample import FileIdentity, FrameSetRecord, VideoRecord
from shards.access import Tars, reading_run
from shards.layout import RunDir, Sample
from shards.reader import iter_tar_samples, read_index, read_run_json


@dataclass
class FrameCheck:
    position: int  # place in the stored sequence
    index: int  # recorded frame index
    time_s: float  # recorded timestamp (from the first frame)
    psnr_db: float | None  # None: ffmpeg returned no frame at that time


@dataclass
class SampleAudit:
    key: str
    source: str
    frames: list[FrameCheck] = field(default_factory=list)
    error: str | None = None  # the sample could not be audited (source gone, unreadable)

    def mismatches(self, min_psnr: float) -> list[FrameCheck]:
        return [f for f in self.frames if f.psnr_db is None or f.psnr_db < min_psnr]

    @property
    def worst_psnr(self) -> float | None:
        values = [f.psnr_db for f in self.frames if f.psnr_db is not None]
        return min(values) if values else None


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Luma PSNR (dB; 99 when equal). Luma only: libswscale's chroma filtering depends on the frame's memory
    layout (a decoder's padded planes vs a copy), which costs a right frame up to 15 dB of chroma PSNR and
    says nothing about which frame it is; luma scores a right frame at 43-45 dB and its neighbour at 20-27."""
    mse = float(np.mean((_luma(a) - _luma(b)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _first_frame_offset(source: OpenedSource, timeout_s: float) -> tuple[float, float]:
    """(the container's start time, the first shown video frame's time): -ss counts from the first."""
    fmt = run_ffprobe(source, ["-show_entries", "format=start_time"], timeout_s).get("format") or {}
    frames = run_ffprobe(
        source, ["-select_streams", "v:0", "-read_intervals", "%+#64", "-show_entries", "frame=pts_time,best_effort_timestamp_time"],
        timeout_s,
    ).get("frames") or []
    times = [float(f.get("pts_time", f.get("best_effort_timestamp_time"))) for f in frames
             if f.get("pts_time", f.get("best_effort_timestamp_time")) not in (None, "N/A")]
    start = float(fmt.get("start_time") or 0.0)
    return start, (min(times) if times else start)


def reference_frame(source: OpenedSource, at_s: float, size: tuple[int, int], resample: str, timeout_s: float,
                    display: tuple[int, int], scaler: str = "swscale") -> np.ndarray | None:
    """The frame ffmpeg decodes at `at_s` (seconds on the container's clock, from its start), upright, at `size`.

    ffmpeg decodes, picks the frame and turns it upright; the pixels come out as 8-bit 4:2:0 at full size and
    are scaled to `size` by the pipeline's own scaler (the run's `resize.scaler`). ffmpeg reads the open source it
    inherits.
    """
    w, h = display
    even = [] if w % 2 == 0 and h % 2 == 0 else ["-vf", f"scale={w + w % 2}:{h + h % 2}"]  # 4:2:0 needs even sizes
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-protocol_whitelist", PROTOCOL_WHITELIST,
           "-ss", f"{max(at_s, 0.0):.6f}", "-i", source.path, "-map", "0:v:0", "-frames:v", "1", *even,
           "-pix_fmt", "yuv420p", "-f", "rawvideo", "-"]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, pass_fds=source.pass_fds)
    w, h = w + w % 2, h + h % 2
    if done.returncode != 0 or len(done.stdout) != w * h * 3 // 2:
        return None
    import av

    frame = av.VideoFrame.from_ndarray(np.frombuffer(done.stdout, dtype=np.uint8).reshape(h * 3 // 2, w), format="yuv420p")
    return frame_rgb(frame, size[0], size[1], resample, 0, scaler)


def _probed_identity(recorded: FileIdentity) -> Identity | None:
    """The identity the probe recorded; None for a sample that recorded none (all zeros: hand-made or older)."""
    if recorded == FileIdentity():
        return None
    return Identity(recorded.device, recorded.inode, recorded.size, recorded.mtime_ns)


@dataclass(frozen=True)
class RemoteAccess:
    """How the run fetched its remote sources (its `input.fetch` and http settings): audit copies them the same way."""

    fetch: FetchConfig
    http: bool = False
    allowed_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> RemoteAccess:
        section = config.get("input") or {}
        return cls(FetchConfig.model_validate(section.get("fetch") or {}),
                   bool((section.get("http") or {}).get("enabled")), url_prefixes(section.get("allowed_roots") or []))


def _fetched_copy(source: str, remote: RemoteAccess, folder: Path) -> Path:
    """A remote source copied into `folder` (raises VideoError as the run's fetch stage would reject it)."""
    if is_http(source) and not remote.http:
        raise VideoError(Reason.FETCH_FAILED, f"{source}: the run's input.http.enabled is false")
    return fetch(source, folder / "source", remote.fetch, allowed_prefixes=remote.allowed_prefixes).path


def audit_sample(key: str, sample: Sample, resample: tuple[str, str], max_frames: int, timeout_s: float,
                 rules: SourceRules | None = None, remote: RemoteAccess | None = None) -> SampleAudit:
    """Re-decode one sample's stored frames from its source, opened as the run opened it: confined by `rules`
    and the very file the run's probe read (else the sample is not audited: its frames came from another file).
    A remote source (object store, http) is copied to a temporary file first, as the run copied it."""
    meta = sample.meta
    source = meta.source
    out = SampleAudit(key, source)
    fs = meta.stored_set()
    if fs is None or not fs.timestamps_s:
        out.error = f"no record of frame set {meta.frame_set!r} in the sample's metadata"
        return out
    with ExitStack() as stack:
        local, fetched = source, "://" in source
        try:
            if fetched:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prolongvid-audit-")))
                local = str(_fetched_copy(source, remote or RemoteAccess(FetchConfig()), folder))
            opened = stack.enter_context(open_source(local, None if fetched else rules))
        except VideoError as e:
            out.error = f"source {source} is not there any more" if e.reason is Reason.MISSING else str(e)
            return out
        probed = _probed_identity(meta.video.file_identity)
        # Size and mtime only: the same file seen from another NFS client, or moved to another disk, has another
        # device and inode number; its frames are then compared as usual. A fresh copy of a remote one: size only.
        fields = ("size",) if fetched else ("size", "mtime_ns")
        if probed is not None and any(getattr(probed, f) != getattr(opened.identity, f) for f in fields):
            changes = [d for d in probed.differences(opened.identity) if d.startswith(fields)]
            out.error = f"{Reason.SOURCE_CHANGED.value}: {source} is not the file the probe read ({', '.join(changes)})"
            return out
        _compare(out, opened, sample, fs, meta.video, resample, max_frames, timeout_s)
    return out


def _compare(out: SampleAudit, source: OpenedSource, sample: Sample, fs: FrameSetRecord, video: VideoRecord,
             resample: tuple[str, str], max_frames: int, timeout_s: float) -> None:
    count = sample.num_frames
    positions = list(range(count))
    if max_frames and len(positions) > max_frames:
        positions = sorted(set(np.linspace(0, count - 1, max_frames).round().astype(int).tolist()))
    if len(fs.timestamps_s) < count or len(fs.indices) < count:
        out.error = f"the record of frame set {fs.name!r} lists {len(fs.timestamps_s)} times for {count} stored frames"
        return
    try:
        start, first = _first_frame_offset(source, timeout_s)
    except Exception as e:  # ffprobe failures are VideoError; anything else is as fatal for this sample
        out.error = f"ffprobe cannot read the source: {e}"
        return
    fps = video.avg_fps or 30.0
    display = (video.width, video.height)  # upright size, as ffmpeg outputs it
    early = 0.25 / max(fps, 1.0)  # aim a quarter frame before: a rounded time never lands on the next frame
    for pos, jpeg in zip(positions, sample.frames(positions)):
        stored = decode_jpeg(jpeg)
        size = (stored.shape[1], stored.shape[0])
        at = first - start + fs.timestamps_s[pos] - early
        ref = reference_frame(source, at, size, resample[0], timeout_s, display, resample[1])
        out.frames.append(FrameCheck(pos, fs.indices[pos], fs.timestamps_s[pos],
                                     None if ref is None else round(psnr(stored, ref), 2)))


def run_audit(run_dir: str | Path, samples: int = 4, seed: int = 0, max_frames: int = 0, keys: list[str] | None = None,
              timeout_s: float = 60.0) -> list[SampleAudit]:
    """Audit `samples` random samples (or the named `keys`) of a run; one sample per worker thread."""
    ffprobe_binary()  # a missing tool stops here, with the install hint
    with reading_run(run_dir) as (run, tars):
        return _audit(run, tars, samples, seed, max_frames, keys, timeout_s)


def _audit(run: RunDir, tars: Tars, samples: int, seed: int, max_frames: int, keys: list[str] | None,
           timeout_s: float) -> list[SampleAudit]:
    rows = read_index(run)
    config = read_run_json(run).get("config") or {}
    frame_set = (config.get("shards") or {}).get("frame_set", "shard")
    spec = next((s for s in (config.get("sampling") or {}).get("sets", []) if s.get("name") == frame_set), {})
    resize = spec.get("resize") or {}  # (filter, scaler) the run scaled with; runs before `scaler` used swscale
    resample = (resize.get("resample", "bicubic"), resize.get("scaler", "swscale"))
    rules = SourceRules.from_config_dict(config)  # the run's own confinement
    remote = RemoteAccess.from_config_dict(config)
    if keys:
        chosen = [r for r in rows if r["key"] in set(keys)]
    else:
        chosen = random.Random(seed).sample(rows, min(samples, len(rows)))
    wanted = {r["key"]: r["shard"] for r in chosen}
    found: dict[str, Sample | SampleAudit] = {}
    for shard in sorted(set(wanted.values())):
        with tars.open(shard) as stream:
            shard_samples = {key: members for key, members in iter_tar_samples(stream) if key in wanted}
        for key, members in shard_samples.items():
            if key in wanted:
                found[key] = _read_sample(key, members)
    with ThreadPoolExecutor(max(1, available_cpus())) as pool:
        futures = {key: pool.submit(audit_sample, key, s, resample, max_frames, timeout_s, rules, remote)
                   for key, s in found.items() if isinstance(s, Sample)}  # fmt: skip
        results = [futures[k].result() if k in futures else found[k] for k in wanted if k in found]
    results += [SampleAudit(k, "", error="listed in the index but not in its shard") for k in wanted if k not in found]
    return results


def _read_sample(key: str, members: dict[str, bytes]) -> Sample | SampleAudit:
    """The sample through the model, or an unaudited result saying why its metadata does not read."""
    try:
        return Sample(members, key)
    except (KeyError, ValueError) as e:  # no json member, not the model, or a newer major format (NewerFormat)
        return SampleAudit(key, "", error=f"its metadata does not read: {e}")


def audit_report(results: list[SampleAudit], min_psnr: float) -> dict[str, Any]:
    return {
        "min_psnr_db": min_psnr,
        "samples": [
            {"key": r.key, "source": r.source, "frames_checked": len(r.frames), "worst_psnr_db": r.worst_psnr,
             "error": r.error,
             "mismatches": [vars(f) for f in r.mismatches(min_psnr)]}
            for r in results
        ],
        "mismatched_frames": sum(len(r.mismatches(min_psnr)) for r in results),
        "unaudited_samples": sum(1 for r in results if r.error),
    }
