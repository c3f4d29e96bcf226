"""Plan benchmark: does `prolongvid plan` project a larger run's wall time from a pilot run?

  pilot       `prolongvid run` (a fresh process: Ray start-up included, as in a real run) on P copies of a
              generated 640x360 H.264 video, the default config, one Ray CPU slot per core;
  projection  `prolongvid plan PILOT --videos N --cluster CORES,0` for N = P x scale videos;
  measured    the same run on N copies; its run.json wall time against the projection's.

Target: projected / measured wall time within 25% (0.75-1.25). CPU-hours and output bytes are compared too, and
the model is applied once more to the measured run's own worker seconds (the pilot's overhead + its CPU work /
cores): on a loaded machine the worker seconds per video move between runs, and this row tells that apart from
an error of the model.
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
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402
from fixtures.videos import SynthVideo, make_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.plan")


def prolongvid(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"prolongvid {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return done.stdout


def run(source: Path, n: int, work: Path, name: str, cpus: int) -> dict:
    videos = work / f"{name}_videos"
    videos.mkdir()
    for i in range(n):
        shutil.copy(source, videos / f"{name}_{i:03d}.mp4")
    out = work / name
    prolongvid("run", str(ROOT / "configs" / "default.yaml"), "--set", f"input.path={videos}", "--set", f"output.dir={out}",
               "--set", "ray.progress=false", "--set", f"ray.num_cpus={cpus}", "--set", "shards.max_samples=8")
    this = json.loads((out / "run.json").read_text())["this_run"]
    shards = json.loads((out / "shards.json").read_text())
    log.info("%s: %d videos in %.1f s", name, n, this["wall_s"])
    return {"out": out, "videos": n, "wall_s": this["wall_s"], "accepted": this["accepted"],
            "cpu_hours": sum(s["seconds"] for s in this["stages"].values()) / 3600,
            "output_bytes": sum(s["bytes"] for s in shards)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30-s videos, a 3-video pilot")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--pilot", type=int, default=None, help="pilot videos (default 6, quick 3)")
    parser.add_argument("--scale", type=int, default=4, help="the measured run has pilot x scale videos")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cpus = len(os.sched_getaffinity(0))
    p = args.pilot or (3 if args.quick else 6)
    n = p * args.scale
    seconds = 30 if args.quick else 60
    spec = SynthVideo(name=f"bench_{seconds}s_640x360", duration_s=seconds, width=640, height=360, fps=30,
                      codec="h264", audio=False, keyint=None)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = make_video(spec, args.workdir)
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="plan-"))
    try:
        pilot = run(source, p, work, "pilot", cpus)
        plan = json.loads(prolongvid("plan", str(pilot["out"]), "--videos", str(n), "--cluster", f"{cpus},0", "--json"))
        measured = run(source, n, work, "large", cpus)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    proj = plan["projection"]
    ratios = {"wall_s": proj["wall_s"] / measured["wall_s"], "cpu_hours": proj["cpu_hours"] / measured["cpu_hours"],
              "output_bytes": proj["output_bytes"] / measured["output_bytes"]}
    model_wall = plan["pilot"]["overhead_s"] + measured["cpu_hours"] * 3600 / cpus  # the model, fed the run's own work
    ratios["model_on_measured_work"] = model_wall / measured["wall_s"]
    targets = [target("plan/projected_wall_over_measured_min", ratios["wall_s"], ">=", 0.75),
               target("plan/projected_wall_over_measured_max", ratios["wall_s"], "<=", 1.25)]
    report = {"machine": machine(), "config": {"pilot_videos": p, "videos": n, "video_s": seconds, "size": "640x360@30",
                                               "cpus": cpus},
              "pilot": {k: v for k, v in pilot.items() if k != "out"}, "overhead_s": plan["pilot"]["overhead_s"],
              "projection": proj, "measured": {k: v for k, v in measured.items() if k != "out"},
              "ratios": {k: round(v, 3) for k, v in ratios.items()}, "targets": targets}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"pilot {p} x {seconds}s 640x360 30fps H.264 videos ({pilot['wall_s']:.1f} s), projected and run: {n} "
          f"videos, {cpus} cores; fixed overhead from the pilot {plan['pilot']['overhead_s']:.1f} s\n")
    rows = [["wall s", f"{proj['wall_s']:.1f}", f"{measured['wall_s']:.1f}", f"{ratios['wall_s']:.2f}"],
            ["CPU-hours (worker s / 3600)", f"{proj['cpu_hours']:.4f}", f"{measured['cpu_hours']:.4f}", f"{ratios['cpu_hours']:.2f}"],
            ["output bytes", str(proj["output_bytes"]), str(measured["output_bytes"]), f"{ratios['output_bytes']:.2f}"],
            ["wall s from the run's own worker s", f"{model_wall:.1f}", f"{measured['wall_s']:.1f}",
             f"{ratios['model_on_measured_work']:.2f}"]]  # fmt: skip
    print(table(["", "projected", "measured", "ratio"], rows))
    print(f"\nbottleneck (projected): {proj['bottleneck']}\n")
    print(targets_table(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
