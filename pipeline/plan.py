"""`prolongvid plan RUN_DIR --videos N --cluster CPUS,GPUS`: a large run's wall time and cost, from a pilot run.

The model (every number it uses is printed with the projection):
  * work scales with video-minutes: each stage's worker seconds (run.json's per-stage `seconds`) and the LLM's
    prompt and completion tokens are divided by the pilot's video-minutes (videos processed x the mean duration
    of its accepted samples; rejected videos are assumed as long) and multiplied by the corpus's;
  * stages run in parallel pools (pipeline/graph.py): every non-LLM stage (probe, filters, decode, CLIP on CPU,
    token budget, writer) shares the cluster's CPUs; the LLM (prompt + completion tokens at T tokens/s per GPU)
    and CLIP on GPU share its GPUs. Wall time = the pilot's fixed overhead + the longest pool's work / capacity;
  * a fixed overhead is added once: the pilot's serial time (Ray start-up and the source stream before its
    first video, the tables after its last write: wall minus run.json's `window_s`) plus the pipeline's fill and
    drain (the idle part of the pilot's window, at most one worker's setup plus one video's pass through the
    stages). Stage setup (decode children, models) is timed apart from the per-video seconds (`setup_s`), so a
    small pilot's start-up is not scaled;
  * accepted share and bytes per accepted sample (shards.json) are the pilot's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from shards.reader import NotARunDir, open_run, read_index, read_run_json, read_shard_list

LLM_STAGES = ("caption", "qa")
CLIP_STAGES = ("clip_scores", "caption_agreement")


class PlanError(ValueError):
    """A bad argument: the message names it (exit 2)."""


def parse_cluster(text: str) -> tuple[float, float]:
    try:
        cpus, gpus = (float(x) for x in text.split(","))
    except ValueError:
        raise PlanError(f"--cluster: {text!r} is not CPUS,GPUS (e.g. 64,8)") from None
    if cpus <= 0 or gpus < 0:
        raise PlanError(f"--cluster: {text!r} needs CPUS > 0 and GPUS >= 0")
    return cpus, gpus


def read_pilot(run_dir: str) -> dict[str, Any]:
    """What the pilot measured: per-stage worker seconds, tokens, video-minutes, bytes, overhead."""
    try:
        run = open_run(run_dir)
    except NotARunDir as e:
        raise PlanError(f"RUN_DIR: {e}") from None
    if not run.run_json.exists():
        raise PlanError(f"RUN_DIR: {run_dir} has no run.json (a pilot run writes one)")
    doc = read_run_json(run)
    this = doc.get("this_run") or {}
    durations = [float(r["duration_s"]) for r in read_index(run) if r.get("duration_s")]
    if not this.get("stages") or not durations or not this.get("accepted"):
        raise PlanError(f"RUN_DIR: the last run in {run_dir} processed no video: nothing to scale from")
    accepted, rejected = int(this["accepted"]), int(sum((this.get("rejected") or {}).values()))
    mean_s = sum(durations) / len(durations)
    config = doc.get("config") or {}
    clip_gpu = float(((config.get("resources") or {}).get("clip") or {}).get("num_gpus") or 0) > 0
    cluster = this.get("cluster") or {}
    cpus = cluster.get("cpus") or (config.get("ray") or {}).get("num_cpus")
    cpus_from = "run.json" if cluster.get("cpus") else "config ray.num_cpus" if cpus else "assumed: this machine's cores"
    shards = read_shard_list(run)
    samples = sum(s["samples"] for s in shards)
    llm = this.get("llm") or {}
    llm_config = config.get("llm") or {}
    served_by_run = llm_config.get("backend") == "ray_engine" or (llm_config.get("http") or {}).get("mode") == "managed"
    pilot = {
        "run_dir": str(run.root), "wall_s": float(this["wall_s"]), "videos": accepted + rejected,
        "accepted": accepted, "rejected": rejected, "mean_video_s": round(mean_s, 3),
        "video_minutes": round((accepted + rejected) * mean_s / 60, 4),
        "cpus": float(cpus or os.cpu_count() or 1), "cpus_from": cpus_from, "gpus": float(cluster.get("gpus") or 0),
        "clip_on_gpu": clip_gpu,
        "stage_seconds": {k: float(v["seconds"]) for k, v in this["stages"].items() if k not in LLM_STAGES},
        "setup_s": round(sum(float(v.get("setup_s", 0)) for v in this["stages"].values()), 3),
        "prompt_tokens": int(llm.get("prompt_tokens", 0)), "completion_tokens": int(llm.get("completion_tokens", 0)),
        "llm_tokens_per_s": float(llm.get("tokens_per_s", 0)), "llm_active_s": float(llm.get("active_s", 0)),
        # a server the run started on a cluster without GPUs ran on CPUs: its rate says nothing of a GPU's
        "llm_on_cpu": bool(llm) and served_by_run and not float(cluster.get("gpus") or 0),
        "bytes_per_sample": sum(s["bytes"] for s in shards) / samples if samples else this.get("bytes_written", 0) / accepted,
    }  # fmt: skip
    pilot.update(_overhead(pilot, this))
    return pilot


def _overhead(pilot: dict[str, Any], this: dict[str, Any]) -> dict[str, float]:
    """The pilot's fixed overhead: its serial time (wall minus the processing window: Ray and the source
    stream before the first video, the tables after the last write) plus the pipeline's fill and drain (the
    idle part of the window, at most one worker's setup and one video's pass through every stage: a large run
    hides the rest of a small pilot's idle time behind other videos). Without a window (an older run.json), all
    of wall minus the longest pool."""
    cpu_s, gpu_s = _pool_work(pilot, 1.0)
    longest = max(cpu_s / pilot["cpus"], gpu_s / max(pilot["gpus"], 1) + pilot["llm_active_s"])
    window = float(this.get("window_s") or 0.0)
    if not window:
        return {"overhead_s": max(0.0, pilot["wall_s"] - longest), "serial_s": 0.0, "fill_s": 0.0}
    stages = this["stages"].values()
    setup = sum(float(v.get("setup_s", 0)) / v["setups"] for v in stages if v.get("setups"))
    latency = sum(float(v["seconds"]) for v in stages) / max(pilot["videos"], 1)
    serial = max(0.0, pilot["wall_s"] - window)
    fill = min(max(0.0, window - longest), setup + latency)
    return {"overhead_s": round(serial + fill, 3), "serial_s": round(serial, 3), "fill_s": round(fill, 3)}


def _pool_work(pilot: dict[str, Any], scale: float) -> tuple[float, float]:
    """(CPU-seconds, GPU-seconds other than the LLM's) of the pilot's stages, times `scale`."""
    gpu = sum(s for k, s in pilot["stage_seconds"].items() if pilot["clip_on_gpu"] and k in CLIP_STAGES)
    return (sum(pilot["stage_seconds"].values()) - gpu) * scale, gpu * scale


def project(pilot: dict[str, Any], videos: int, cpus: float, gpus: float, hours: float | None = None,
            llm_tokens_per_s: float | None = None) -> dict[str, Any]:
    """The projection for `videos` videos (of `hours` hours, else the pilot's mean length) on `cpus`,`gpus`."""
    if videos <= 0:
        raise PlanError(f"--videos: {videos} must be > 0")
    if hours is not None and hours <= 0:
        raise PlanError(f"--hours: {hours:g} must be > 0")
    if llm_tokens_per_s is not None and llm_tokens_per_s <= 0:
        raise PlanError(f"--llm-tokens-per-s: {llm_tokens_per_s:g} must be > 0")
    minutes = hours * 60 if hours is not None else videos * pilot["mean_video_s"] / 60
    scale = minutes / pilot["video_minutes"]
    cpu_s, clip_gpu_s = _pool_work(pilot, scale)
    prompt, completion = pilot["prompt_tokens"] * scale, pilot["completion_tokens"] * scale
    rate = llm_tokens_per_s or pilot["llm_tokens_per_s"]
    if prompt + completion and not rate:
        raise PlanError("--llm-tokens-per-s: the pilot measured no LLM rate: give one")
    if prompt + completion and llm_tokens_per_s is None and pilot.get("llm_on_cpu"):
        raise PlanError(f"--llm-tokens-per-s: the pilot's LLM ran on CPUs ({pilot['llm_tokens_per_s']:g} tokens/s), "
                        "which says nothing of a GPU's rate: give the tokens/s one GPU serves")
    llm_gpu_s = (prompt + completion) / rate if prompt + completion else 0.0
    if (llm_gpu_s or clip_gpu_s) and gpus <= 0:
        raise PlanError("--cluster: the pilot ran the LLM or CLIP on GPUs: give GPUS >= 1")
    pools = {"cpu": {"work_s": cpu_s, "capacity": cpus, "unit": "CPU"},
             "gpu": {"work_s": clip_gpu_s + llm_gpu_s, "capacity": gpus, "unit": "GPU"}}
    for pool in pools.values():
        pool["wall_s"] = pool["work_s"] / pool["capacity"] if pool["capacity"] else 0.0
    bottleneck = max(pools, key=lambda p: pools[p]["wall_s"])
    stages = {k: v * scale for k, v in pilot["stage_seconds"].items()}
    if bottleneck == "gpu":
        stage = "llm" if llm_gpu_s >= clip_gpu_s else "clip"
    else:
        stage = max((k for k in stages if not (pilot["clip_on_gpu"] and k in CLIP_STAGES)), key=stages.get)
    accepted = videos * pilot["accepted"] / pilot["videos"]
    per_min = pilot["video_minutes"]
    return {
        "videos": videos, "video_hours": round(minutes / 60, 3), "cluster": {"cpus": cpus, "gpus": gpus},
        "llm_tokens_per_s_per_gpu": rate, "llm_rate_from": "--llm-tokens-per-s" if llm_tokens_per_s else "pilot",
        "wall_s": round(pilot["overhead_s"] + pools[bottleneck]["wall_s"], 1),
        "cpu_hours": round(cpu_s / 3600, 6), "gpu_hours": round((clip_gpu_s + llm_gpu_s) / 3600, 6),
        "accepted": round(accepted), "output_bytes": round(accepted * pilot["bytes_per_sample"]),
        "prompt_tokens": round(prompt), "completion_tokens": round(completion),
        "bottleneck": f"{bottleneck} ({stage})",
        "pools": {k: {"work_s": round(v["work_s"], 1), "capacity": v["capacity"], "wall_s": round(v["wall_s"], 1)}
                  for k, v in pools.items()},
        "stage_cpu_s": {k: round(v, 1) for k, v in stages.items()},
        "per_video_minute": {"stage_s": {k: round(v / per_min, 4) for k, v in pilot["stage_seconds"].items()},
                             "prompt_tokens": round(pilot["prompt_tokens"] / per_min, 1),
                             "completion_tokens": round(pilot["completion_tokens"] / per_min, 1)},
    }  # fmt: skip


def _hms(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h{rest // 60:02d}m{rest % 60:02d}s" if h else f"{rest // 60}m{rest % 60:02d}s"


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def assumptions(pilot: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    per = plan["per_video_minute"]
    stages = ", ".join(f"{k} {v:.3f}" for k, v in per["stage_s"].items())
    pools = "; ".join(f"{k}: {v['work_s']:.0f} s / {v['capacity']:g} = {_hms(v['wall_s'])}" for k, v in plan["pools"].items())
    return [
        f"pilot: {pilot['videos']} videos ({pilot['accepted']} accepted, {pilot['rejected']} rejected), mean "
        f"{pilot['mean_video_s']:.1f} s, {pilot['video_minutes']:.2f} video-minutes, {pilot['wall_s']:.1f} s wall "
        f"on {pilot['cpus']:g} CPUs ({pilot['cpus_from']})",
        f"worker seconds per video-minute: {stages}",
        f"LLM tokens per video-minute: {per['prompt_tokens']:g} prompt, {per['completion_tokens']:g} completion; "
        f"{plan['llm_tokens_per_s_per_gpu']:g} (prompt + completion) tokens/s per GPU ({plan['llm_rate_from']})",
        f"bytes per accepted sample {pilot['bytes_per_sample']:.0f}; accepted share "
        f"{pilot['accepted'] / pilot['videos']:.3f}; CLIP on {'GPU' if pilot['clip_on_gpu'] else 'CPU'}",
        f"fixed overhead {pilot['overhead_s']:.1f} s: serial {pilot['serial_s']:.1f} s (before the pilot's first "
        f"video, after its last write) + fill and drain {pilot['fill_s']:.1f} s (its workers' setup took "
        f"{pilot['setup_s']:.1f} worker-s)",
        f"pools (work / capacity): {pools}; wall time = overhead + the longest",
    ]


def plan_table(pilot: dict[str, Any], plan: dict[str, Any]) -> str:
    from pipeline.core.tables import table

    c = plan["cluster"]
    rows = [["videos", f"{plan['videos']} ({plan['video_hours']:g} hours, {plan['accepted']} accepted)"],
            ["cluster", f"{c['cpus']:g} CPUs, {c['gpus']:g} GPUs"],
            ["wall time", _hms(plan["wall_s"])],
            ["CPU-hours", f"{plan['cpu_hours']:.2f}"], ["GPU-hours", f"{plan['gpu_hours']:.2f}"],
            ["output", _bytes(plan["output_bytes"])],
            ["LLM tokens", f"{plan['prompt_tokens']:,} prompt, {plan['completion_tokens']:,} completion"],
            ["bottleneck", plan["bottleneck"]]]  # fmt: skip
    return table(["projection", ""], rows) + "\n\nassumptions:\n" + "\n".join(f"  {a}" for a in assumptions(pilot, plan))


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        cpus, gpus = parse_cluster(args.cluster)
        pilot = read_pilot(args.run_dir)
        plan = project(pilot, args.videos, cpus, gpus, args.hours, args.llm_tokens_per_s)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"pilot": pilot, "projection": plan, "assumptions": assumptions(pilot, plan)}, indent=1)
          if args.json else plan_table(pilot, plan))
    return 0


def add_plan_command(sub: Any) -> None:
    p = sub.add_parser("plan", help="project a large run's wall time, CPU/GPU-hours, bytes and tokens from a pilot run")
    p.add_argument("run_dir", help="the pilot run's output directory (run.json, index.parquet, shards/)")
    p.add_argument("--videos", type=int, required=True, help="videos in the corpus")
    p.add_argument("--hours", type=float, help="hours of video in the corpus (default: videos x the pilot's mean)")
    p.add_argument("--cluster", required=True, metavar="CPUS,GPUS", help="the cluster the run gets, e.g. 512,64")
    p.add_argument("--llm-tokens-per-s", type=float, metavar="T",
                   help="prompt + completion tokens/s one GPU serves (default: the pilot's measured rate)")
    p.add_argument("--json", action="store_true", help="print the projection as JSON")
    p.set_defaults(func=cmd_plan)
