"""The same pipeline code under `ray job submit` against a Ray head this test starts (127.0.0.1 only) and stops."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shards.reader import open_run, read_index, read_rejects
from shards.verify import verify_run

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    bin_dir = Path(sys.executable).parent
    ray = shutil.which("ray", path=str(bin_dir)) or "ray"
    temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    # A fresh HOME and no RAY_* variables: an embedded ray.init() earlier in this process sets RAY_AUTH_MODE
    # and writes ~/.ray/auth_token, which would make this head demand a token the client does not have.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    (tmp_path / "home").mkdir()
    port, dash = free_port(), free_port()
    start = [ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}", "--num-cpus=2",
             # every other fixed default port too: the session's embedded Ray may hold them
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--temp-dir={temp}", "--disable-usage-stats"]
    done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        yield ray, f"http://127.0.0.1:{dash}", env
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_cluster(temp_dir: str) -> None:
    """Stop only this head's processes (found by their temp dir): `ray stop` would also kill the embedded
    Ray the rest of the test session runs on."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                procs.append(p)
        except psutil.Error:
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline_on_the_cluster(ray_head, mixed_dir, tmp_path):
    ray, address, env = ray_head
    out = tmp_path / "job_out"
    submit = [ray, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
              "python", "-m", "pipeline", "run", "configs/demo.yaml", "--set", f"input.path={mixed_dir}", "--set", "input.format=auto",
              "--set", f"output.dir={out}", "--set", "ray.progress=false", "--set", "llm.enabled=false"]
    for _ in range(6):  # the head's job agent can take a few seconds to come up after `ray start` returns
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=480, cwd=ROOT)
        if "No available agent" not in done.stderr:
            break
        time.sleep(5)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "succeeded" in (done.stdout + done.stderr)
    run = open_run(out)
    good = sorted(p.name for p in mixed_dir.iterdir() if not p.name.startswith("bad_"))
    assert sorted(Path(r["source"]).name for r in read_index(run)) == good
    assert len(read_rejects(run)) == len(list(mixed_dir.glob("bad_*")))
    assert verify_run(run) == []
