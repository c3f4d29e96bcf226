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


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    done = cli("demo", "--out", out, "--config", ROOT / "configs/demo.yaml")
    assert done.returncode == 0, done.stderr
    records = json.loads((out / "demo.json").read_text())
    reasons = sorted(r["rejected"]["reason"] for r in records if "rejected" in r)
    assert reasons == sorted(["empty_file", "truncated", "truncated", "not_media", "no_video_stream", "still_image", "unsupported_codec"])
    sampled = [r for r in records if "decode" in r]
    assert len(sampled) >= 5
    assert all(r["decode"]["sets"]["shard"]["num_frames"] == 192 for r in sampled)
    assert any(r["decode"]["fallback_reason"] for r in sampled)  # the Ogg/Theora example
    assert (out / "config.resolved.yaml").exists()
    assert "sampled" in done.stdout
