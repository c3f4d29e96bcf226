"""`prolongvid plan`: the projection's arithmetic on hand-made numbers, its argument errors, and a real pilot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.plan import project, read_pilot
from tests.conftest import pipeline_config


def make_pilot(root: Path, llm: bool = True, cluster: dict | None = None, window_s: float | None = None) -> Path:
    """4 videos processed (3 accepted: 60, 120, 180 s, mean 2 min -> 8 video-minutes), 48 CPU-seconds of stages,
    8800 LLM tokens in 100 s, 3000 bytes in shards, 130 s wall on 2 CPUs."""
    (root / "shards").mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a", "b", "c"], "duration_s": [60.0, 120.0, 180.0]}), root / "index.parquet")
    (root / "shards.json").write_text(json.dumps([{"name": "s-000.tar", "bytes": 3000, "samples": 3, "sha256": "x"}]))
    stages = {"probe": {"seconds": 4.0, "videos": 4}, "decode": {"seconds": 40.0, "videos": 4},
              "write": {"seconds": 4.0, "videos": 3}, "caption": {"seconds": 100.0, "videos": 3},
              "qa": {"seconds": 50.0, "videos": 3}}  # fmt: skip
    this = {"wall_s": 130.0, "accepted": 3, "rejected": {"truncated": 1}, "stages": stages,
            "llm": {"prompt_tokens": 8000, "completion_tokens": 800, "active_s": 100.0, "tokens_per_s": 88.0} if llm else {},
            "cluster": {"cpus": 2.0, "gpus": 0.0} if cluster is None else cluster}  # fmt: skip
    if window_s is not None:  # a run.json with the processing window and the workers' setup
        this["window_s"] = window_s
        stages["probe"].update(setup_s=1.0, setups=2)
        stages["decode"].update(setup_s=2.0, setups=2)
    (root / "run.json").write_text(json.dumps({"config": {"ray": {"num_cpus": None}}, "this_run": this}))
    return root


def test_pilot_measurements(tmp_path):
    pilot = read_pilot(str(make_pilot(tmp_path)))
    assert pilot["videos"] == 4 and pilot["accepted"] == 3 and pilot["video_minutes"] == 8.0
    assert pilot["bytes_per_sample"] == 1000 and pilot["cpus"] == 2 and pilot["cpus_from"] == "run.json"
    assert pilot["stage_seconds"] == {"probe": 4.0, "decode": 40.0, "write": 4.0}  # the LLM's are counted in tokens
    assert pilot["overhead_s"] == 30.0  # 130 s wall - the longest pool (LLM: 100 s; CPUs: 48 s / 2)


def test_overhead_is_serial_time_plus_the_pipelines_fill(tmp_path):
    """130 s wall, 84 s window: 46 s serial. The window's idle part (84 - 48 CPU-s / 2 = 60 s) is more than a large
    run would show, so the fill is capped at one worker's setup (1.0 / 2 + 2.0 / 2) plus one video's pass through
    every stage ((48 + 150 LLM) / 4 = 49.5 s)."""
    pilot = read_pilot(str(make_pilot(tmp_path, llm=False, window_s=84.0)))
    assert (pilot["serial_s"], pilot["fill_s"], pilot["overhead_s"]) == (46.0, 51.0, 97.0)
    assert pilot["setup_s"] == 3.0 and pilot["stage_seconds"]["decode"] == 40.0  # setup is not in the seconds
    tight = read_pilot(str(make_pilot(tmp_path / "b", llm=False, window_s=30.0)))  # idle 6 s: below the cap
    assert (tight["serial_s"], tight["fill_s"], tight["overhead_s"]) == (100.0, 6.0, 106.0)
    plan = project(pilot, 40, cpus=4, gpus=0)
    assert plan["wall_s"] == 97.0 + 480 / 4


def test_llm_bound_projection(tmp_path):
    pilot = read_pilot(str(make_pilot(tmp_path)))
    plan = project(pilot, 400, cpus=16, gpus=4, llm_tokens_per_s=110)  # 800 video-minutes: 100x the pilot
    assert plan["video_hours"] == pytest.approx(800 / 60, abs=1e-3)
    assert plan["cpu_hours"] == pytest.approx(4800 / 3600, abs=1e-4)
    assert plan["prompt_tokens"] == 800_000 and plan["completion_tokens"] == 80_000
    assert plan["gpu_hours"] == pytest.approx(880_000 / 110 / 3600, abs=1e-4)
    assert plan["pools"]["cpu"]["wall_s"] == 300.0 and plan["pools"]["gpu"]["wall_s"] == 2000.0
    assert plan["wall_s"] == 2030.0 and plan["bottleneck"] == "gpu (llm)"
    assert plan["accepted"] == 300 and plan["output_bytes"] == 300_000
    assert plan["per_video_minute"]["stage_s"]["decode"] == 5.0 and plan["per_video_minute"]["prompt_tokens"] == 1000
    # Without T, the pilot's measured rate (88 tokens/s a GPU).
    default = project(pilot, 400, cpus=16, gpus=4)
    assert default["wall_s"] == 30 + 880_000 / 88 / 4 and default["llm_rate_from"] == "pilot"


def test_cpu_bound_projection_and_hours(tmp_path):
    pilot = read_pilot(str(make_pilot(tmp_path)))
    plan = project(pilot, 400, cpus=2, gpus=8, llm_tokens_per_s=1000)
    assert plan["pools"]["cpu"]["wall_s"] == 2400.0 and plan["pools"]["gpu"]["wall_s"] == 110.0
    assert plan["wall_s"] == 2430.0 and plan["bottleneck"] == "cpu (decode)"
    longer = project(pilot, 400, cpus=2, gpus=8, hours=20, llm_tokens_per_s=1000)  # 1200 minutes, not 800
    assert longer["cpu_hours"] == pytest.approx(2.0) and longer["output_bytes"] == 300_000  # bytes are per sample


def test_no_llm_pilot_needs_no_gpus(tmp_path):
    pilot = read_pilot(str(make_pilot(tmp_path, llm=False)))
    assert pilot["overhead_s"] == 106.0  # 130 - 48 / 2
    plan = project(pilot, 40, cpus=4, gpus=0)
    assert plan["gpu_hours"] == 0 and plan["wall_s"] == 106 + 480 / 4 and plan["bottleneck"] == "cpu (decode)"


def test_a_pilot_whose_llm_ran_on_cpus_needs_a_gpu_rate(tmp_path, capsys):
    pilot = make_pilot(tmp_path / "p")
    doc = json.loads((pilot / "run.json").read_text())
    doc["config"]["llm"] = {"backend": "http", "http": {"mode": "managed"}}  # the run started the server, no GPUs
    (pilot / "run.json").write_text(json.dumps(doc))
    assert main(["plan", str(pilot), "--videos", "10", "--cluster", "4,1"]) == 2
    assert "the pilot's LLM ran on CPUs (88 tokens/s)" in capsys.readouterr().err
    assert main(["plan", str(pilot), "--videos", "10", "--cluster", "4,1", "--llm-tokens-per-s", "5000"]) == 0
    assert "5000 (prompt + completion) tokens/s per GPU (--llm-tokens-per-s)" in capsys.readouterr().out
    doc["config"]["llm"]["http"]["mode"] = "external"  # a server of its own: its hardware is not known here
    (pilot / "run.json").write_text(json.dumps(doc))
    assert main(["plan", str(pilot), "--videos", "10", "--cluster", "4,1"]) == 0
    assert "88 (prompt + completion) tokens/s per GPU (pilot)" in capsys.readouterr().out


@pytest.mark.parametrize("args, named", [
    (["--videos", "0", "--cluster", "4,1"], "--videos"),
    (["--videos", "-3", "--cluster", "4,1"], "--videos"),
    (["--videos", "10", "--cluster", "4x1"], "--cluster"),
    (["--videos", "10", "--cluster", "0,1"], "--cluster"),
    (["--videos", "10", "--cluster", "4,0"], "--cluster"),  # the pilot's LLM needs a GPU
    (["--videos", "10", "--cluster", "4,1", "--hours", "0"], "--hours"),
    (["--videos", "10", "--cluster", "4,1", "--llm-tokens-per-s", "-1"], "--llm-tokens-per-s"),
])  # fmt: skip
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, capsys, args, named):
    assert main(["plan", str(make_pilot(tmp_path)), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_folder_without_run_json_exits_2(tmp_path, capsys):
    assert main(["plan", str(tmp_path), "--videos", "10", "--cluster", "4,0"]) == 2
    assert "RUN_DIR" in capsys.readouterr().err
    (make_pilot(tmp_path / "p") / "run.json").unlink()
    assert main(["plan", str(tmp_path / "p"), "--videos", "10", "--cluster", "4,0"]) == 2
    assert "run.json" in capsys.readouterr().err


def test_plan_from_a_real_pilot(video, ray_local, tmp_path, capsys):
    from pipeline.run import run_pipeline

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        shutil.copy(video("h264_10s"), videos / f"v{i}.mp4")
    out = tmp_path / "pilot"
    run_pipeline(pipeline_config(videos, out))

    def plan(n: int) -> dict:
        assert main(["plan", str(out), "--videos", str(n), "--cluster", "8,0", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    small, large = plan(30), plan(60)
    pilot, p30, p60 = small["pilot"], small["projection"], large["projection"]
    this = json.loads((out / "run.json").read_text())["this_run"]
    shards = json.loads((out / "shards.json").read_text())
    assert pilot["videos"] == 3 and pilot["accepted"] == 3 and pilot["cpus"] == 2 and pilot["cpus_from"] == "run.json"
    assert pilot["mean_video_s"] == pytest.approx(10.0, abs=0.2)
    assert pilot["bytes_per_sample"] == sum(s["bytes"] for s in shards) / 3
    assert {"probe", "decode", "write"} <= set(pilot["stage_seconds"])
    work = sum(v["seconds"] for v in this["stages"].values())
    assert p30["cpu_hours"] == pytest.approx(work * 10 / 3600, rel=1e-3)  # 10x the pilot's videos
    assert p60["cpu_hours"] == pytest.approx(2 * p30["cpu_hours"], rel=1e-3)
    assert p30["output_bytes"] == round(30 * pilot["bytes_per_sample"]) and p30["accepted"] == 30
    assert p30["gpu_hours"] == 0 and p30["prompt_tokens"] == 0 and p30["completion_tokens"] == 0
    assert p30["bottleneck"].startswith("cpu (")
    assert p30["wall_s"] == pytest.approx(pilot["overhead_s"] + work * 10 / 8, abs=0.2)
    assert 0 <= pilot["overhead_s"] < this["wall_s"]
    assert main(["plan", str(out), "--videos", "30", "--cluster", "8,0"]) == 0
    text = capsys.readouterr().out
    for row in ("wall time", "CPU-hours", "GPU-hours", "output", "LLM tokens", "bottleneck", "assumptions:",
                "fixed overhead", "per video-minute"):
        assert row in text, row


def test_projection_of_a_larger_run_on_this_machine(video, tmp_path, capsys):
    """The issue's check, end to end: a 3-video pilot projects a 4x larger run; that run is made, and its wall
    time is within 25% of the projection. Each run is its own `prolongvid run` process, as a user runs them (Ray
    start-up in both); the per-video seconds the model scales exclude the workers' setup, which a 3-video pilot
    would otherwise inflate."""
    root = Path(__file__).resolve().parents[2]

    def run(name: str, n: int) -> dict:
        videos = tmp_path / f"{name}_videos"
        videos.mkdir()
        for i in range(n):
            shutil.copy(video("h264_10s"), videos / f"{name}_{i:02d}.mp4")
        sets = [f"input.path={videos}", f"output.dir={tmp_path / name}", "ray.progress=false", "ray.num_cpus=2",
                "shards.max_samples=4", "llm.enabled=false", "input.format=auto", "shards.eval_fraction=0"]
        cmd = [sys.executable, "-m", "pipeline", "run", str(root / "configs" / "demo.yaml")]
        done = subprocess.run(cmd + [a for s in sets for a in ("--set", s)], cwd=root, capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((tmp_path / name / "run.json").read_text())["this_run"]

    pilot = run("pilot", 3)
    assert main(["plan", str(tmp_path / "pilot"), "--videos", "12", "--cluster", "2,0", "--json"]) == 0
    projection = json.loads(capsys.readouterr().out)["projection"]
    measured = run("large", 12)
    assert measured["accepted"] == projection["accepted"] == 12
    assert pilot["stages"]["decode"]["setup_s"] > 0  # the decode child's start, kept out of the scaled seconds
    assert 0.75 <= projection["wall_s"] / measured["wall_s"] <= 1.25, (projection, measured)
