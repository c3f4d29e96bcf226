"""A run whose videos live on an object store (a real S3 API server on loopback) or behind http(s) URLs: the
same keys and the same stored frames as the same videos in a local folder, the sample naming the URL, no copy
left in scratch; a URL outside the allowed prefixes, and http without opting in, are rejects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shards.layout import RunDir
from shards.reader import iter_tar_samples, read_rejects
from shards.verify import verify_run
from tests.httpserver import http_server
from fixtures.s3server import make_bucket, s3_env, s3_server, upload_tree

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_cli(tmp: Path, env: dict[str, str], *sets: str) -> subprocess.CompletedProcess:
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "pipeline", "run", str(ROOT / "configs" / "demo.yaml"), "--set", "llm.enabled=false",
            "--set", "ray.progress=false", "--set", "input.format=auto", "--set", "shards.eval_fraction=0", "--set", "shards.max_samples=2"]
    for s in (*sets, f"input.fetch.scratch_dir={scratch}"):
        args += s.split("=", 1) if s.startswith("--") else ["--set", s]  # a flag (`--force`, `--retry-rejects=R`)
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, capture_output=True, text=True, env=full, cwd=tmp, timeout=600)


def frames_by_key(out: Path) -> dict[str, bytes]:
    found = {}
    for tar in sorted(RunDir(out).shards.glob("*.tar")):
        for key, sample in iter_tar_samples(tar):
            found[key] = (sample["frames.mjpeg"], json.loads(sample["json"]))
    return found


@pytest.fixture(scope="module")
def layout(video, tmp_path_factory):
    """The same two videos (one in a subfolder) and a text file, locally and in a bucket."""
    local = tmp_path_factory.mktemp("local") / "raw"
    (local / "sub").mkdir(parents=True)
    shutil.copy(video("h264_10s"), local / "a.mp4")
    shutil.copy(video("vp9_10s"), local / "sub" / "b.webm")
    (local / "notes.txt").write_text("not a video")
    return local


def test_an_object_store_prefix_runs_like_a_local_folder(layout, tmp_path, monkeypatch):
    with s3_server(tmp_path) as endpoint:
        make_bucket(endpoint, "videos")
        env = s3_env(endpoint)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        upload_tree(layout, "s3://videos/raw")
        remote = run_cli(tmp_path, env, "input.path=s3://videos/raw/", f"output.dir={tmp_path / 'remote'}",
                         "input.allowed_roots=[s3://videos/raw/]")
        assert remote.returncode == 0, remote.stderr[-3000:]
    local = run_cli(tmp_path, {}, f"input.path={layout}", f"output.dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr[-3000:]
    got, want = frames_by_key(tmp_path / "remote"), frames_by_key(tmp_path / "local")
    assert sorted(got) == sorted(want) and len(got) == 2
    for key, (frames, meta) in got.items():
        assert frames == want[key][0]  # the same frames, byte for byte
        assert meta["source"].startswith("s3://videos/raw/") and meta["video"]["path"] == meta["source"]
        assert meta["decode"]["source"] == meta["source"]
    assert not [p for p in (tmp_path / "scratch").rglob("*") if p.is_file() and p.suffix in (".mp4", ".webm")]
    assert verify_run(RunDir(tmp_path / "remote")) == []


def test_url_lists_need_opting_in_and_stay_inside_the_allowed_prefixes(layout, tmp_path):
    with http_server(layout) as (base, _):
        manifest = tmp_path / "urls.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in [
            {"id": "inside", "video": f"{base}/a.mp4"},
            {"id": "outside", "video": f"{base}/sub/b.webm"},
        ]))
        off = run_cli(tmp_path, {}, f"input.path={manifest}", f"output.dir={tmp_path / 'off'}")
        assert off.returncode == 0, off.stderr[-3000:]
        assert {r["source"]: r["reason"] for r in read_rejects(RunDir(tmp_path / "off"))} == \
            {f"{base}/a.mp4": "bad_source", f"{base}/sub/b.webm": "bad_source"}
        on = run_cli(tmp_path, {}, f"input.path={manifest}", f"output.dir={tmp_path / 'on'}", "input.http.enabled=true",
                     f"input.allowed_roots=[{base}/a.mp4]")
        assert on.returncode == 0, on.stderr[-3000:]
    assert {r["source"]: r["reason"] for r in read_rejects(RunDir(tmp_path / "on"))} == \
        {f"{base}/sub/b.webm": "outside_allowed_roots"}
    assert list(frames_by_key(tmp_path / "on")) == ["inside"]
    assert verify_run(RunDir(tmp_path / "on")) == [] and verify_run(RunDir(tmp_path / "off")) == []
