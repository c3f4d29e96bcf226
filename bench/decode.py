"""Decode benchmark: one-pass frame extraction against the decode floor and the paper's loader.

Sampling frames is the pipeline's main cost per video, so this measures, on
generated H.264 videos, how close `extract_frames` comes to the least any
reader can pay and how much it saves over the loader the paper's trainer uses.
Each case is timed --repeats times, interleaved with the others so that a noisy
machine slows them alike, and the median is kept:

  floor     every frame decoded once by PyAV (threads AUTO, no pixel conversion);
  seed      the paper's trainer: decord VideoReader(num_threads=1), linspace(0, N-1, k), get_batch;
  exact     extract_frames, one uniform set of k frames, exact seek, square 384 JPEGs (the default shard set's
            pixels); with `decode.skip_unwanted` (the default) the decoder discards the frames no wanted frame
            needs; `exact_noskip` is the same with every frame decoded (the decoder before it);
  keyframe  the same with keyframe seek (and the timestamp error it makes);
  multiset  one call making `shard` (uniform 192) and the default `caption` set (1 fps, short side 224)
            against each set alone.

Each video comes twice: as generated (x264 ultrafast: only I and P frames, every frame a reference) and
re-encoded as cameras and video sites deliver (`_high`: x264 medium, High profile, B-frames, b-pyramid).
Probing runs once per video, outside the timings. Targets are same-run ratios,
for the config's default backend; the other backend's are suffixed `[name]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import PIL

from fixtures.videos import SynthError, SynthVideo, make_video
from pipeline.core.config_load import ConfigError
from pipeline.run_config import load_run_config
from pipeline.video.config_video import DecodeConfig, FrameSetConfig, ResizeConfig, SamplingConfig
from pipeline.video.decoders import import_decord
from pipeline.core.errors import VideoError
from pipeline.core.tables import table as text_table
from pipeline.video.extract import available_cpus, extract_frames
from pipeline.video.probe import preflight
from pipeline.core.records import VideoInfo

log = logging.getLogger("bench.decode")
decord = import_decord()  # the project's import: only the build proven exact (decord 0.6.0)

KS = (32, 128, 192)
BACKENDS = ("decord", "pyav")
FULL_VIDEOS = [(300, 640, 360), (60, 1280, 720)]  # (seconds, width, height), all 30 fps
QUICK_VIDEOS = [(60, 640, 360), (15, 1280, 720)]
# exact k frames / floor, per video size: (the targets, what they were before frames no wanted frame needs were
# left undecoded); the quick videos take their full-size counterpart's
EXACT_TARGETS = {(640, 360): ((0.25, 0.55, 0.7), 1.1), (1280, 720): ((0.35, 0.7, 0.85), 1.1)}
CAPTION = next(s for s in SamplingConfig().sets if s.name == "caption")  # the run config's default caption set


def shard_set(k: int, seek: str = "exact") -> FrameSetConfig:
    return FrameSetConfig(name="shard", mode="uniform", num_frames=k, seek=seek, resize=ResizeConfig(policy="square", size=384))


def video_label(seconds: int, width: int, height: int) -> str:
    span = f"{seconds // 60}min" if seconds % 60 == 0 else f"{seconds}s"
    return f"{span}_{width}x{height}"


def default_backend() -> str:
    return load_run_config(None, ["input.path=unused", "output.dir=unused"]).decode.backend


def decode_config(backend: str, skip: bool = True) -> DecodeConfig:
    """The run config's decode section with only the backend chosen; no fallback, so the named backend is what runs."""
    overrides = ["input.path=unused", "output.dir=unused", f"decode.backend={backend}", "decode.fallback=none",
                 f"decode.skip_unwanted={str(skip).lower()}"]
    return load_run_config(None, overrides).decode


def high_profile(path: Path) -> Path:
    """`path` re-encoded with x264's default (medium) preset: High profile, 3 B-frames, b-pyramid (cached)."""
    import subprocess

    from fixtures.videos import ffmpeg_binary

    out = path.with_name(path.stem + "_high.mp4")
    if not out.exists():
        tmp = out.with_suffix(".part.mp4")
        subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-i", str(path), "-c:v", "libx264",
                        "-preset", "medium", "-an", str(tmp)], check=True, timeout=3600)  # fmt: skip
        tmp.rename(out)
    return out


# ---------------------------------------------------------------- the cases


def floor(path: Path) -> tuple[int, dict]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream)), {}


def seed_loader(path: Path, k: int) -> tuple[int, dict]:
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    idx = np.linspace(0, len(vr) - 1, k, dtype=int)
    return len(vr.get_batch(idx).asnumpy()), {}


def ours(info: VideoInfo, specs: list[FrameSetConfig], decode: DecodeConfig) -> tuple[int, dict]:
    result = extract_frames(info, SamplingConfig(sets=specs), decode)
    if result.decoder != decode.backend:
        raise RuntimeError(f"asked for {decode.backend}, {result.decoder} ran")
    first = result.sets[specs[0].name]
    errors = {"max_ts_error_s": first.max_timestamp_error_s, "mean_ts_error_s": first.mean_timestamp_error_s}
    return sum(len(s) for s in result.sets.values()), errors


@dataclass
class Case:
    video: str
    method: str
    backend: str
    k: int | None
    fn: Callable[[], tuple[int, dict]]
    times: list[float] = field(default_factory=list)
    frames: int = 0
    extra: dict = field(default_factory=dict)

    def run(self) -> None:
        start = time.perf_counter()
        self.frames, self.extra = self.fn()
        self.times.append(time.perf_counter() - start)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def video_cases(label: str, path: Path, info: VideoInfo) -> list[Case]:
    cases = [Case(label, "floor", "pyav", None, lambda: floor(path))]
    cases += [Case(label, "seed", "decord", k, lambda k=k: seed_loader(path, k)) for k in KS]
    for backend in BACKENDS:
        dec = decode_config(backend)
        for seek in ("exact", "keyframe"):
            cases += [
                Case(label, seek, backend, k, lambda k=k, seek=seek, dec=dec: ours(info, [shard_set(k, seek)], dec))
                for k in KS
            ]
        if backend == "pyav":
            plain = decode_config(backend, skip=False)
            cases += [Case(label, "exact_noskip", backend, k, lambda k=k, dec=plain: ours(info, [shard_set(k)], dec))
                      for k in KS]
        cases += [
            Case(label, "multiset", backend, None, lambda dec=dec: ours(info, [shard_set(192), CAPTION], dec)),
            Case(label, "alone_shard", backend, 192, lambda dec=dec: ours(info, [shard_set(192)], dec)),
            Case(label, "alone_caption", backend, None, lambda dec=dec: ours(info, [CAPTION], dec)),
        ]
    return cases


def run_interleaved(cases: list[Case], repeats: int) -> None:
    for r in range(repeats):
        for case in cases:
            log.info("repeat %d/%d: %s %s %s k=%s", r + 1, repeats, case.video, case.method, case.backend, case.k)
            case.run()


# ---------------------------------------------------------------- results and targets


def find(cases: list[Case], video: str, method: str, backend: str | None = None, k: int | None = None) -> Case:
    for c in cases:
        if c.video == video and c.method == method and (backend is None or c.backend == backend) and c.k == k:
            return c
    raise KeyError((video, method, backend, k))


def result_rows(cases: list[Case], default: str) -> list[dict]:
    rows = []
    for c in cases:
        base = find(cases, c.video, "floor")
        seed = find(cases, c.video, "seed", k=c.k) if c.method in ("exact", "keyframe") else None
        rows.append({
            "video": c.video, "method": c.method, "backend": c.backend,
            "default_backend": c.method not in ("floor", "seed") and c.backend == default,
            "k": c.k, "frames": c.frames, "seconds": c.seconds, "times_s": c.times,
            "frames_per_s": c.frames / c.seconds if c.seconds > 0 else None,
            "vs_floor": c.seconds / base.seconds, "vs_seed": c.seconds / seed.seconds if seed else None,
            **c.extra,
        })
    return rows


def target(name: str, value: float, op: str, threshold: float) -> dict:
    met = value <= threshold if op == "<=" else value >= threshold
    return {"name": name, "value": round(value, 4), "target": f"{op} {threshold:g}", "met": bool(met)}


def video_targets(cases: list[Case], video: str, backend: str, default: str) -> list[dict]:
    suffix = "" if backend == default else f"[{backend}]"

    def t(method: str, k: int | None = None) -> float:
        return find(cases, video, method, backend, k).seconds

    floor_s = find(cases, video, "floor").seconds
    seed = {k: find(cases, video, "seed", k=k).seconds for k in KS}
    wanted, was = EXACT_TARGETS[(640, 360) if video.split("_")[1].startswith("640") else (1280, 720)]
    out = [target(f"{video}/exact_{k}f_vs_floor{suffix} (was <= {was:g})", t("exact", k) / floor_s, "<=", w)
           for k, w in zip(KS, wanted)]
    if backend == "pyav":
        out += [target(f"{video}/noskip_vs_exact_{k}f{suffix}", t("exact_noskip", k) / t("exact", k), ">=", 1.0)
                for k in KS]
    out.append(target(f"{video}/seed_vs_exact_32f{suffix} (was >= 1.3)", seed[32] / t("exact", 32), ">=", 3))
    out += [target(f"{video}/seed_vs_keyframe_{k}f{suffix}", seed[k] / t("keyframe", k), ">=", 10) for k in KS]
    largest = max(t("alone_shard", 192), t("alone_caption"))
    out.append(target(f"{video}/multiset_vs_largest{suffix} (was <= 1.2)", t("multiset") / largest, "<=", 1.1))
    return out


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(), "cpus_available": available_cpus(), "platform": platform.platform(),
        "python": platform.python_version(), "av": av.__version__, "decord": decord.__version__,
        "numpy": np.__version__, "pillow": PIL.__version__,
    }


# ---------------------------------------------------------------- output


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Text columns (the first three) left, numbers right."""
    return text_table(headers, rows, left_columns=3)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def human_report(report: dict, default: str) -> str:
    m = report["machine"]
    head = (f"decode benchmark: {m['cpus_available']} CPUs, {m['platform']}, python {m['python']}, "
            f"av {m['av']}, decord {m['decord']}; * = default backend ({default}); times are medians")
    rows = [
        [r["video"], r["method"], r["backend"] + ("*" if r["default_backend"] else ""), fmt(r["k"], "d"),
         str(r["frames"]), fmt(r["seconds"], ".3f"), fmt(r["frames_per_s"], ".1f"), fmt(r["vs_floor"], ".2f"),
         fmt(r["vs_seed"], ".3f"), fmt(r.get("max_ts_error_s") if r["method"] == "keyframe" else None, ".3f"),
         fmt(r.get("mean_ts_error_s") if r["method"] == "keyframe" else None, ".3f")]
        for r in report["results"]
    ]
    measurements = table(
        ["video", "method", "backend", "k", "frames", "median s", "frames/s", "t/floor", "t/seed", "max err s", "mean err s"],
        rows,
    )
    targets = table(
        ["target", "value", "wanted", "met"],
        [[t["name"], f"{t['value']:.3f}", t["target"], "yes" if t["met"] else "NO"] for t in report["targets"]],
    )
    met = sum(t["met"] for t in report["targets"])
    return f"{head}\n\n{measurements}\n\ntargets (unsuffixed: {default}):\n{targets}\n\n{met}/{len(report['targets'])} targets met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter videos, one repeat: a smoke check")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3, quick 1)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache",
                        help="where generated videos are cached (default bench/.cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        default = default_backend()
        cases: list[Case] = []
        for seconds, width, height in QUICK_VIDEOS if args.quick else FULL_VIDEOS:
            label = video_label(seconds, width, height)
            spec = SynthVideo(name=f"bench_{label}", duration_s=seconds, width=width, height=height, fps=30,
                              codec="h264", audio=False, keyint=None)
            log.info("video %s", label)
            path = make_video(spec, args.workdir)
            for name, video in ((label, path), (f"{label}_high", high_profile(path))):
                video.read_bytes()  # into the page cache, so the first timed case reads no colder than the rest
                cases += video_cases(name, video, preflight(video))
        run_interleaved(cases, repeats)
        videos = list(dict.fromkeys(c.video for c in cases))
        backends = [default, *(b for b in BACKENDS if b != default)]
        report = {
            "machine": machine(),
            "results": result_rows(cases, default),
            "targets": [t for v in videos for b in backends for t in video_targets(cases, v, b, default)],
        }
    except (ConfigError, SynthError, VideoError, RuntimeError) as e:
        log.error("benchmark failed: %s", e)
        return 1
    print(json.dumps(report, indent=2) if args.json else human_report(report, default))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
