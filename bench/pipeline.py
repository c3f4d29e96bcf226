"""Pipeline benchmark: videos/hour of a whole run (probe, filters, one-pass decode, token budget, shards)
against what the cores could do if they did nothing but decode, measured in the same run.

  floor       the per-video decode floor: CPU seconds of one video's frame sets made by `extract_frames`
              alone, in this process, one decode thread, the same config (decode every frame once, convert
              only the wanted ones, resize, JPEG): what the cores must pay per video for the real work
              (CPU time, because decord keeps helper threads busy even with num_threads=1);
  ideal       cores x 3600 / floor videos per hour: every core doing nothing but that work (the floor is
              measured before and after the runs, and their mean used: this host's speed drifts by 10-20%
              over minutes, and the drift is printed);
  raw decode  for reference: every frame decoded, one thread, no pixel conversion (PyAV);
  pipeline    `run_pipeline` on N copies of the video (distinct names, so distinct samples) with the
              default config's frame sets (192 frames at 384x384 for the shard, 1 fps at 224 for
              captions), embedded Ray already started, one Ray CPU slot per core.

Target: pipeline / ideal >= 0.8 (both cores kept busy), over the run's wall time. "in window" is the same
over run.json's `window_s` (first video's first stage to the last write), without Ray Data's start and the tables. Each decode backend is run; the target is for
the config's default backend, the other is suffixed [name].
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
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av

from bench.common import machine, table, target, targets_table  # noqa: E402
from fixtures.videos import SynthVideo, make_video  # noqa: E402
from pipeline.run_config import load_run_config
from pipeline.run import init_ray, run_pipeline  # noqa: E402

log = logging.getLogger("bench.pipeline")


def decode_floor(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            sum(1 for _ in container.decode(stream))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extract_floor(path: Path, backend: str, repeats: int) -> float:
    from pipeline.video.extract import extract_frames
    from pipeline.video.probe import preflight

    cfg = load_run_config(None, ["input.path=.", "output.dir=.", f"decode.backend={backend}", "decode.threads=1"])
    info = preflight(path, cfg.probe, cfg.limits)
    times = []
    for _ in range(repeats):  # CPU seconds, not wall: decord runs helper threads even with num_threads=1
        start = time.process_time()
        extract_frames(info, cfg.sampling, cfg.decode)
        times.append(time.process_time() - start)
    return statistics.median(times)


def run_once(videos: Path, out: Path, backend: str, cpus: int) -> dict:
    overrides = [f"input.path={videos}", f"output.dir={out}", f"decode.backend={backend}", "ray.progress=false",
                 f"ray.num_cpus={cpus}", "shards.max_samples=8"]
    cfg = load_run_config(None, overrides)
    summary = run_pipeline(cfg, force=True)
    this = json.loads((out / "run.json").read_text())["this_run"]
    return {"backend": backend, "videos": summary.accepted, "rejected": summary.rejected, "wall_s": summary.wall_s,
            "window_s": this["window_s"], "videos_per_hour": summary.videos_per_hour, "stages": this["stages"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1-minute videos, fewer of them")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--videos", type=int, default=None, help="videos per run (default 24, quick 4)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cpus = len(os.sched_getaffinity(0))
    n = args.videos or (4 if args.quick else 24)
    seconds = 60 if args.quick else 300
    spec = SynthVideo(name=f"bench_{seconds // 60}min_640x360", duration_s=seconds, width=640, height=360, fps=30,
                      codec="h264", audio=False, keyint=None)
    source = make_video(spec, args.workdir)
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="pipeline-"))
    try:
        videos = work / "videos"
        videos.mkdir()
        for i in range(n):
            shutil.copy(source, videos / f"video_{i:03d}.mp4")
        repeats = 1 if args.quick else 3
        raw = decode_floor(source, repeats)
        default = load_run_config(None, ["input.path=.", "output.dir=."]).decode.backend
        backends = [default, *sorted({"decord", "pyav"} - {default})]
        floors = {b: extract_floor(source, b, repeats) for b in backends}
        log.info("raw decode %.2fs, per-video floors %s on %d cores", raw, floors, cpus)
        init_ray(load_run_config(None, ["input.path=.", "output.dir=.", f"ray.num_cpus={cpus}"]))
        runs = [run_once(videos, work / f"out_{b}", b, cpus) for b in backends]
        after = {b: extract_floor(source, b, repeats) for b in backends}  # the host's speed drifts: measured again
        log.info("per-video floors after the runs %s", after)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in runs:
        before_s, after_s = floors[r["backend"]], after[r["backend"]]
        floor = (before_s + after_s) / 2
        r["floor_s"], r["floor_drift"] = round(floor, 3), round(after_s / before_s, 3)
        r["ideal_videos_per_hour"] = round(cpus * 3600 / floor, 1)
        r["vs_ideal"] = round(r["videos_per_hour"] / r["ideal_videos_per_hour"], 3)
        r["vs_ideal_in_window"] = round(r["videos"] * 3600 / r["window_s"] / r["ideal_videos_per_hour"], 3)
        r["vs_raw_decode"] = round(r["videos_per_hour"] / (cpus * 3600 / raw), 3)
    targets = [target(f"pipeline/videos_per_hour_vs_ideal{'' if r['backend'] == default else '[' + r['backend'] + ']'}",
                      r["vs_ideal"], ">=", 0.8) for r in runs]
    report = {"machine": machine(), "config": {"videos": n, "video_s": seconds, "size": "640x360@30", "cpus": cpus},
              "raw_decode_s": round(raw, 3), "results": runs, "targets": targets}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{n} x {seconds}s 640x360 30fps H.264 videos, {cpus} cores; raw decode {raw:.2f}s a video\n")
    rows = []
    for r in runs:
        rows.append([f"pipeline ({r['backend']})", str(r["videos"]), f"{r['wall_s']:.1f}", f"{r['window_s']:.1f}",
                     f"{r['floor_s']:.2f} ({r['floor_drift']:.2f})", f"{r['ideal_videos_per_hour']:.0f}",
                     f"{r['videos_per_hour']:.0f}", f"{r['vs_ideal']:.2f}", f"{r['vs_ideal_in_window']:.2f}",
                     f"{r['vs_raw_decode']:.2f}"])
    print(table(["run", "videos", "wall s", "window s", "floor s (after/before)", "ideal v/h", "videos/hour",
                 "vs ideal", "in window", "vs raw decode"], rows))
    print()
    for r in runs:
        per = "  ".join(f"{k} {v['seconds'] / max(v['videos'], 1):.2f}s" for k, v in r["stages"].items())
        print(f"per-video worker time ({r['backend']}): {per}")
    print()
    print(targets_table(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
