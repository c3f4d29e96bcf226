"""Exactly once under faults: a writer killed after a commit, a driver SIGKILLed and restarted at once.

After every fault the run directory must hold the same samples, byte for byte
(metadata compared without its timings), as an uninterrupted run: no key
twice, `--verify` clean, no stray files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fixtures.videos import SynthVideo, make_video
from pipeline.run import run_pipeline
from shards.layout import RunDir
from shards.runfolder import claim
from shards.target import FAULT_KILL_AFTER_COMMIT
from tests.conftest import pipeline_config
from tests.contents import assert_clean, content

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eo_in")
    for i in range(6):
        make_video(SynthVideo(f"v{i}", duration_s=7 + i, width=160, height=90, audio=False), folder)
    return folder


@pytest.fixture(scope="module")
def reference(small_videos, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("eo_ref") / "run"
    summary = run_pipeline(pipeline_config(small_videos, out))
    assert summary.samples_total == 6
    return content(out)


def test_a_writer_killed_after_its_commit_stores_nothing_twice(small_videos, reference, ray_local, tmp_path):
    out = tmp_path / "run"
    claim(RunDir(out))  # a run folder, as a run makes it
    (out / ".ledger" / FAULT_KILL_AFTER_COMMIT).touch()
    summary = run_pipeline(pipeline_config(small_videos, out))
    assert not (out / ".ledger" / FAULT_KILL_AFTER_COMMIT).exists()  # the writer did die
    assert summary.samples_total == 6
    # Its result never reached the driver (its retry found the keys committed): the counts are the committed ones.
    doc = json.loads((out / "run.json").read_text())["this_run"]
    assert summary.accepted == doc["accepted"] == 6
    assert doc["shards_written"] == len(json.loads((out / "shards.json").read_text()))
    assert doc["bytes_written"] == sum(s["bytes"] for s in json.loads((out / "shards.json").read_text()))
    assert doc.get("driver_tally", {"accepted": 6})["accepted"] <= 6
    assert content(out) == reference
    assert_clean(out)


def _cli_run(small_videos: Path, out: Path, ray_temp: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline", "run", str(ROOT / "configs" / "demo.yaml"),
           "--set", f"input.path={small_videos}", "--set", "input.format=auto", "--set", f"output.dir={out}",
           "--set", "llm.enabled=false", "--set", "shards.max_samples=2", "--set", "ray.num_cpus=2",
           "--set", "shards.eval_fraction=0",  # as the reference's `pipeline_config`: a sample's json names its split
           "--set", f"ray.temp_dir={ray_temp}"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_and_restart(start: Callable[[], subprocess.Popen], attempts: int, started: Callable[[], bool],
                     later: Callable[[int], float], poll: float) -> None:
    """Start a driver `attempts` times and SIGKILL each one: an even attempt once `started()` (a shard under way;
    its writer then lives on as an orphan that may finish and try to commit after the next attempt began), at most
    60 s in, an odd one `later(attempt)` seconds in. Then a last start must run to the end. The processes the killed
    drivers left behind are killed at the end."""
    left_behind: list[psutil.Process] = []
    try:
        for attempt in range(attempts):
            driver = start()
            deadline = time.monotonic() + (60 if attempt % 2 == 0 else later(attempt))
            while time.monotonic() < deadline and driver.poll() is None:
                if attempt % 2 == 0 and started():
                    break
                time.sleep(poll)
            if driver.poll() is None:
                left_behind += psutil.Process(driver.pid).children(recursive=True)
                driver.send_signal(signal.SIGKILL)  # its Ray workers live on: orphans that may still try to commit
            driver.wait()
        final = start()
        log = final.communicate(timeout=600)[0].decode(errors="replace")
        assert final.returncode == 0, log[-3000:]
    finally:
        for proc in left_behind:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_driver_killed_and_restarted_five_times_stores_every_video_once(small_videos, reference, tmp_path):
    out = tmp_path / "run"
    ray_temp = tempfile.mkdtemp(prefix="raye", dir="/tmp")
    try:
        kill_and_restart(lambda: _cli_run(small_videos, out, ray_temp), attempts=5,
                         started=lambda: any((out / "shards").glob("*.partial")),
                         later=lambda attempt: 5 + 2 * attempt, poll=0.05)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert content(out) == reference
    assert_clean(out)
