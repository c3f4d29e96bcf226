"""Orchestration overhead: what the whole stage graph costs per video when the video itself costs next to nothing.

  graph       `run_pipeline` (the real Ray Data graph: sources, probe, length, decode, visual, token budget,
              the shard writer, the ledger and tables) over a manifest of N rows that all point at one
              2-second 64x36 video of 4 frames (distinct ids, so N distinct samples), with a 1-frame
              frame set: the video costs little (mostly the probe's ffprobe runs), so what is left is the graph.
              Per-video cost = (wall time of the N-row run - wall time of a 1-row run, the fixed start-up)
              x CPU slots / N; the orchestration overhead is that minus the tiny video's own work: the graph's
              own video stages (probe, decode in its watched child process, filters) run on
              it one at a time in this process, wall seconds (the probe's ffprobe runs and the decode are
              child processes: CPU time of this process alone would miss them). The stages'
              own seconds inside the graph (run.json's `stages`) are reported beside it.
  floor       the per-video decode floor of a 3-minute 640x360 30 fps H.264 video: CPU seconds of
              `extract_frames` with the default config's frame sets and backend, one thread (as bench/pipeline.py).

Target: per-video orchestration overhead / decode floor <= 1%.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_SET = "sampling.sets=[{name: shard, mode: uniform, num_frames: 1, resize: {size: 32}}]"
GRAPH_SETTINGS = [TINY_SET, "filters.length.enabled=false", "shards.frame_set=shard"]


def write_manifest(path: Path, video: Path, n: int) -> None:
    with path.open("w") as f:
        f.writelines(json.dumps({"id": f"v{i:07d}", "path": str(video)}) + "\n" for i in range(n))


def run_graph(manifest: Path, out: Path, cpus: int) -> dict:
    from pipeline.run_config import load_run_config
    from pipeline.run import run_pipeline

    overrides = [f"input.path={manifest}", "input.format=jsonl", f"output.dir={out}", "ray.progress=false",
                 f"ray.num_cpus={cpus}", *GRAPH_SETTINGS]  # fmt: skip
    cfg = load_run_config(None, overrides)
    start = time.perf_counter()
    summary = run_pipeline(cfg, force=True)
    wall = time.perf_counter() - start
    rejected = sum(summary.rejected.values())
    stage_s = sum(s["seconds"] for s in summary.stages.values())
    return {"rows": summary.accepted + rejected, "accepted": summary.accepted, "rejected": rejected,
            "rejected_by_reason": summary.rejected, "wall_s": round(wall, 3), "stage_s": round(stage_s, 3),
            "stages": summary.stages}  # fmt: skip


def tiny_work(path: Path, repeats: int = 20) -> tuple[float, float]:
    """The tiny video through the graph's own video stages (probe, decode in its watched child, filters), in this
    process, one video at a time (medians): wall seconds, and CPU seconds of this process and its finished
    children (the probe's ffprobe runs; the decode child's time shows only in the wall time)."""
    import resource
    import statistics

    from pipeline.run_config import load_run_config
    from pipeline.core.stage import run_chain
    from pipeline.core.task import VideoTask
    from pipeline.run_plan import resolve_plan

    cfg = load_run_config(None, ["input.path=.", "output.dir=.", *GRAPH_SETTINGS])
    stages = list(resolve_plan(cfg).groups[0].stages)

    def cpu() -> float:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime

    walls, cpus = [], []
    try:
        for n in range(repeats + 1):
            start, start_cpu = time.perf_counter(), cpu()
            row = run_chain(stages, VideoTask(f"w{n}", str(path)).to_row([]), ["shard"])
            if row["error"]:
                raise RuntimeError(f"the tiny video was rejected: {row['error']}")
            if n:  # the first call starts the decode child
                walls.append(time.perf_counter() - start)
                cpus.append(cpu() - start_cpu)
    finally:
        for stage in stages:
            stage.teardown()
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="300 videos")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    n = 300 if args.quick else args.videos
    cpus = len(os.sched_getaffinity(0))

    from bench.pipeline import extract_floor
    from fixtures.videos import SynthVideo, make_video
    from pipeline.run_config import load_run_config
    from pipeline.run import init_ray

    long = make_video(SynthVideo(name="bench_3min_640x360", duration_s=180, width=640, height=360, fps=30,
                                 audio=False), args.workdir)  # fmt: skip
    tiny = make_video(SynthVideo(name="bench_tiny_64x36", duration_s=2, width=64, height=36, fps=2, audio=False),
                      args.workdir)  # fmt: skip
    default = load_run_config(None, ["input.path=.", "output.dir=."]).decode.backend
    floor = extract_floor(long, default, 1 if args.quick else 3)
    work_s, work_cpu_s = tiny_work(tiny)
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="overhead-"))
    try:
        init_ray(load_run_config(None, ["input.path=.", "output.dir=.", f"ray.num_cpus={cpus}"]))
        runs = {}
        for rows in (1, n):
            manifest = work / f"manifest_{rows}.jsonl"
            write_manifest(manifest, tiny, rows)
            runs[rows] = run_graph(manifest, work / f"out_{rows}", cpus)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    big, one = runs[n], runs[1]
    per_video = max(0.0, big["wall_s"] - one["wall_s"]) * cpus / max(big["rows"] - 1, 1)
    overhead = max(0.0, per_video - work_s)
    ratio = overhead / floor if floor else 0.0
    targets = [target("per-video orchestration overhead / decode floor of a 3-min 640x360 video", ratio, "<=", 0.01)]
    report = {"machine": machine(), "cpus": cpus, "videos": n, "decode_backend": default, "floor_s": round(floor, 3),
              "runs": {str(k): v for k, v in runs.items()}, "per_video_s": round(per_video, 5),
              "tiny_video_work_s": round(work_s, 5), "tiny_video_work_cpu_s": round(work_cpu_s, 5),
              "stage_s_per_video_in_graph": round(big["stage_s"] / max(big["rows"], 1), 5),
              "overhead_per_video_s": round(overhead, 5),
              "gross_vs_floor": round(per_video / floor, 5) if floor else 0.0, "targets": targets}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{n} tiny videos through the whole graph, {cpus} CPU slots; decode floor of a 3-min 640x360 video "
          f"({default}): {floor:.2f} s\n")  # fmt: skip
    rows = [[str(k), str(v["accepted"]), str(v["rejected_by_reason"] or 0), f"{v['wall_s']:.1f}",
             f"{1000 * v['stage_s'] / max(v['rows'], 1):.1f}"] for k, v in runs.items()]  # fmt: skip
    print(table(["videos", "accepted", "rejected", "wall s", "stage ms / video in graph"], rows))
    print(f"\nper video after start-up: {1000 * per_video:.1f} ms of CPU slots, of which the tiny video's own work "
          f"{1000 * work_s:.1f} ms (alone: {1000 * work_cpu_s:.1f} ms CPU with ffprobe); orchestration {1000 * overhead:.1f} ms = {100 * ratio:.2f}% of the decode floor "
          f"({100 * per_video / floor:.2f}% with the work)\n")  # fmt: skip
    print(targets_table(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
