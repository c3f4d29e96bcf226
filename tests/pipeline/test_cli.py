"""The command line as users run it: `python -m pipeline ...` in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_probe_reports_good_and_bad_files_and_exits_nonzero_when_any_is_bad(video, bad_file):
    done = cli("probe", "--json", video("h264_10s"), bad_file("png_as_mp4"))
    assert done.returncode == 1, done.stderr
    rows = json.loads(done.stdout)
    assert rows[0]["ok"] and rows[0]["num_frames"] == 300
    assert rows[1] == {"path": str(bad_file("png_as_mp4")), "ok": False, "reason": "still_image", "detail": rows[1]["detail"]}
    table = cli("probe", video("h264_10s"))
    assert table.returncode == 0 and "h264_10s.mp4" in table.stdout and "320x180" in table.stdout


def test_sample_writes_frames_metadata_and_the_resolved_config(video, tmp_path):
    out = tmp_path / "s"
    done = cli("sample", video("vfr_10s"), "--out", out, "--config", ROOT / "configs/demo.yaml", "--set", "sampling.sets.0.num_frames=16")
    assert done.returncode == 0, done.stderr
    assert len(list((out / "shard").glob("*.jpg"))) == 16
    assert len(list((out / "caption").glob("*.jpg"))) == 10
    meta = json.loads((out / "frames.json").read_text())
    assert meta["video"]["variable_frame_rate"] is True
    assert meta["decode"]["decoder"] in ("decord", "pyav")
    assert meta["decode"]["sets"]["shard"]["num_frames"] == 16
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["sampling"]["sets"][0]["num_frames"] == 16 and resolved["output"]["dir"] == str(out)


def test_sample_of_a_bad_file_says_why(bad_file, tmp_path):
    done = cli("sample", bad_file("audio_only"), "--out", tmp_path / "x")
    assert done.returncode == 1 and "no_video_stream" in done.stderr


def test_config_errors_name_the_field_and_exit_2(video, tmp_path):
    done = cli("sample", video("h264_10s"), "--out", tmp_path, "--set", "decode.backend=gpu")
    assert done.returncode == 2
    assert "decode.backend" in done.stderr and "Traceback" not in done.stderr


def test_demo_runs_the_pipeline_end_to_end(tmp_path):
    out = tmp_path / "demo"
    done = cli("demo", "--out", out, "--config", ROOT / "configs/demo.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    import pyarrow.parquet as pq

    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    reasons = sorted(r["reason"] for r in rejects if not r["reason"].startswith("llm_"))
    assert reasons == sorted(["empty_file", "truncated", "truncated", "not_media", "no_video_stream", "still_image", "unsupported_codec"])
    # captions and QA came from the tiny model's managed server; its noise may cost a video an llm_* reject
    index = pq.read_table(out / "index.parquet").to_pylist()
    llm_rejects = [r for r in rejects if r["reason"].startswith("llm_")]
    assert len(index) + len(llm_rejects) == 7 and index
    assert all(row["caption_clips"] >= 1 and row["num_qa"] >= 1 for row in index)
    assert json.loads((out / "run.json").read_text())["this_run"]["llm"]["requests"] > 0
    assert "LLM tokens/s" in done.stdout and (out / "logs" / "llm-server.log").exists()
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert len(index) >= 5 and all(r["frames_stored"] == 192 for r in index)
    assert {r["decoder"] for r in index} == {"pyav"}  # the default, exact decoder
    assert (out / "config.resolved.yaml").exists() and (out / "run.json").exists()
    assert "samples" in done.stdout and "rejects" in done.stdout
    # the annotation file's two (its known answers and a multiple-choice duration question) + one per QA pair
    assert all(r["num_conversations"] == 2 + r["num_qa"] for r in index)
    from shards.split import split_of

    shards = json.loads((out / "shards.json").read_text())
    held_out = {r["key"] for r in index if r.get("split") == "eval"}
    assert held_out == {r["key"] for r in index if split_of(r["key"], 0.2) == "eval"} and held_out  # by key
    assert all(("-eval-" in s["name"]) == (s.get("split") == "eval") for s in shards)
    verify = cli("stats", out, "--verify")
    assert verify.returncode == 0, verify.stderr
    audit = cli("audit", out, "--samples", "3", "--frames", "16")  # ffmpeg re-decodes what the shards store
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "0 mismatched frame(s), 0 not auditable" in audit.stderr


def test_run_refuses_bad_configs_naming_the_field(tmp_path):
    for override, field in [
        ("shards.max_samples=0", "shards.max_samples"),
        ("resources.video.num_cpus=-1", "resources.video.num_cpus"),
        ("filters.length.min_duration_s=700", "min_duration_s"),
        ("filters.token_budget.stages.2.max_tokens=0", "filters.token_budget.stages.2.max_tokens"),
        ("shards.frame_set=nope", "shards.frame_set"),
        ("input.format=xml", "input.format"),
    ]:
        done = cli("run", ROOT / "configs/demo.yaml", "--set", f"output.dir={tmp_path}", "--set", "llm.enabled=false", "--set", override)
        assert done.returncode == 2, (override, done.stderr)
        assert field in done.stderr and "Traceback" not in done.stderr, (override, done.stderr)
    missing = cli("run", ROOT / "configs/demo.yaml", "--set", f"input.path={tmp_path / 'nope'}", "--set", f"output.dir={tmp_path}", "--set", "llm.enabled=false")
    assert missing.returncode == 2 and "input.path" in missing.stderr
