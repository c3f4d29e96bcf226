"""Chaos suite: faults on a three-node Ray cluster, runs submitted with `ray job submit`.

Every fault is compared with a clean run on the same cluster: the sha256 of
every shard member by key must be equal, no key twice, `--verify` clean, no
stray files. The cluster lives in a network namespace (see cluster.py), so
its traffic never leaves this machine.
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
from pathlib import Path

import psutil
import pytest

from fixtures.videos import SynthVideo, make_video
from shards.layout import RunDir, Sample
from shards.reader import iter_tar_samples
from shards.runfolder import claim
from shards.target import FAULT_KILL_AFTER_COMMIT, FAULT_PAUSE_BEFORE_COMMIT, FAULT_WRITER_PID
from tests.chaos.cluster import NODE_IP, ROOT, Cluster, Namespace, namespaces_available
from tests.contents import assert_clean, content

pytestmark = [pytest.mark.slow, pytest.mark.skipif(namespaces_available() is not None, reason=str(namespaces_available()))]

LLM_PORT = 8011
SETS = ("sampling.sets=[{name: shard, mode: uniform, num_frames: 8, resize: {size: 64}},"
        " {name: caption, mode: time_fps, fps: 0.5, resize: {policy: short_side, size: 64}}]")  # fmt: skip
LLM = ["llm.enabled=true", "llm.model=fake", f"llm.http.url=http://{NODE_IP}:{LLM_PORT}/v1", "llm.http.mode=external",
       "llm.retry.backoff_s=0.1", "llm.retry.backoff_max_s=1", "llm.http.timeout_s=20", "llm.videos_in_flight=4",
       "llm.captions.text_pattern=null", "llm.qa.text_pattern=null"]  # fmt: skip


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chaos_in")
    for i in range(6):
        make_video(SynthVideo(f"c{i}", duration_s=6 + 2 * i, width=160, height=90, fps=10, audio=False), folder)
    return folder


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="chaos", dir="/tmp"))  # short: Ray's socket paths
    ns = Namespace()
    try:
        yield Cluster(ns, root)
    finally:
        ns.close()
        shutil.rmtree(root, ignore_errors=True)


def run_cmd(videos: Path, out: Path, *sets: str) -> list[str]:
    cmd = ["python", "-m", "pipeline", "run", "configs/demo.yaml"]
    for s in (f"input.path={videos}", "input.format=auto", f"output.dir={out}", "ray.progress=false", "llm.enabled=false",
              "shards.max_samples=2", SETS, *sets):  # fmt: skip
        cmd += ["--set", s]
    return cmd


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def submit_and_wait(cluster: Cluster, cmd: list[str]) -> str:
    rc, log = finish(cluster.submit(cmd))
    assert rc == 0 and "succeeded" in log, log[-4000:]
    return log


@pytest.fixture(scope="module")
def reference_run(cluster, videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chaos_ref") / "run"
    submit_and_wait(cluster, run_cmd(videos, out))
    return out


@pytest.fixture(scope="module")
def reference(reference_run):
    ref = content(reference_run)
    assert len({key for key, _ in ref}) == 6
    return ref


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240, what: str = "", done_ok: bool = False) -> object:
    """`predicate`'s first truthy value; with `done_ok`, None when the job instead ends well (nothing was left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            if done_ok and proc.returncode == 0:
                return None
            raise AssertionError(f"the job ended before {what}: {proc.communicate()[0][-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def partial_holder(cluster: Cluster, out: Path) -> tuple[int, str] | None:
    """(pid, worker node) of a process holding one of the run's unfinished shards open."""
    shards = str(out / "shards")
    for p in cluster.ns.members():
        try:
            if any(f.path.startswith(shards) and f.path.endswith(".partial") for f in p.open_files()):
                node = cluster.node_of(p.pid)
                if node:
                    return p.pid, node
        except psutil.Error:
            continue
    return None


def test_worker_node_killed_while_writing(cluster, videos, reference, tmp_path):
    out = tmp_path / "run"
    claim(RunDir(out))  # a run folder, as a run makes it
    (out / ".ledger" / FAULT_PAUSE_BEFORE_COMMIT).write_text("4")  # writers wait with the shard open
    job = cluster.submit(run_cmd(videos, out), wait=False)
    writer, node = wait_for(lambda: partial_holder(cluster, out), job, what="a writer held a shard open")
    cluster.kill_raylet(node)  # the writer itself lives on for a moment: an orphan that will try to commit
    (out / ".ledger" / FAULT_PAUSE_BEFORE_COMMIT).unlink()
    rc, log = finish(job)
    assert rc == 0, log[-4000:]
    assert content(out) == reference
    assert_clean(out)
    this = json.loads((out / "run.json").read_text())["this_run"]  # the counts are what was committed
    listed = json.loads((out / "shards.json").read_text())
    assert this["accepted"] == 6 and this["shards_written"] == len(listed)
    cluster.kill_node(node)  # what is left of it (its agents and log monitor outlive the raylet)
    cluster.start_worker(node)  # the next tests get the full cluster back
    cluster.wait_nodes(3)


def test_a_run_with_no_worker_node_left_ends_and_resumes(cluster, videos, reference, tmp_path):
    out = tmp_path / "run"
    job = cluster.submit(run_cmd(videos, out, "ray.resource_wait_s=5"), wait=False)
    wait_for(lambda: cluster.drivers(out), job, what="the driver started")
    for node in cluster.workers:
        cluster.kill_raylet(node)  # every worker node gone: the head has no CPUs for the video pool
    rc, log = finish(job, timeout=300)
    assert rc != 0 and "exit code 7" in log and "ray.resource_wait_s): video (needs 1 CPU)" in log, log[-4000:]
    for node in cluster.workers:
        cluster.kill_node(node)
        cluster.start_worker(node)
    cluster.wait_nodes(3)
    submit_and_wait(cluster, run_cmd(videos, out))  # the rerun resumes
    assert content(out) == reference
    assert_clean(out)


def test_write_task_worker_killed(cluster, videos, reference, tmp_path):
    out = tmp_path / "run"
    claim(RunDir(out))  # a run folder, as a run makes it
    (out / ".ledger" / FAULT_KILL_AFTER_COMMIT).touch()
    submit_and_wait(cluster, run_cmd(videos, out))
    assert not (out / ".ledger" / FAULT_KILL_AFTER_COMMIT).exists()  # a writer did die, after its commit
    assert content(out) == reference
    assert_clean(out)
    this = json.loads((out / "run.json").read_text())["this_run"]  # its result never came: the commits count
    assert this["accepted"] == 6 and this["shards_written"] == len(json.loads((out / "shards.json").read_text()))


def test_a_writer_lost_with_its_node_right_after_its_commit(cluster, videos, reference, tmp_path):
    out = tmp_path / "run"
    claim(RunDir(out))  # a run folder, as a run makes it
    (out / ".ledger" / FAULT_KILL_AFTER_COMMIT).write_text("node")  # the first writer to commit then waits
    pid_file = out / ".ledger" / FAULT_WRITER_PID
    job = cluster.submit(run_cmd(videos, out), wait=False)
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), job, what="a writer committed"))
    node = cluster.node_of(pid)
    cluster.kill_raylet(node)
    cluster.kill_node(node)  # the writer with it: its result never reaches the driver
    rc, log = finish(job)
    assert rc == 0, log[-4000:]
    pid_file.unlink()
    assert content(out) == reference
    assert_clean(out)
    this = json.loads((out / "run.json").read_text())["this_run"]  # the counts are what was committed
    assert this["accepted"] == 6 and this["shards_written"] == len(json.loads((out / "shards.json").read_text()))
    assert this["driver_tally"]["accepted"] < 6  # the retry found the lost writer's keys committed: not counted
    cluster.start_worker(node)
    cluster.wait_nodes(3)


def test_driver_killed_and_restarted_five_times(cluster, videos, reference, tmp_path):
    out = tmp_path / "run"
    for attempt in range(5):
        job = cluster.submit(run_cmd(videos, out), wait=False)
        # kill at different points: as soon as the driver runs, while a shard is open, after a commit; the last
        # attempt's orphaned workers may have finished the run meanwhile, and then this one has nothing to do
        if attempt % 3 == 0:
            wait_for(lambda: cluster.drivers(out), job, what="the driver started", done_ok=True)
        elif attempt % 3 == 1:
            claim(RunDir(out))  # a run folder, as a run makes it
            (out / ".ledger" / FAULT_PAUSE_BEFORE_COMMIT).write_text("2")
            wait_for(lambda: list((out / "shards").glob("*.partial")) if (out / "shards").exists() else None, job,
                     what="a shard was open", done_ok=True)  # fmt: skip
        else:
            wait_for(lambda: list((out / "shards").glob("*.tar")) if (out / "shards").exists() else None, job,
                     what="a shard was committed", done_ok=True)  # fmt: skip
        for driver in cluster.drivers(out):
            driver.send_signal(signal.SIGKILL)  # its workers live on as orphans that may still try to commit
        (out / ".ledger" / FAULT_PAUSE_BEFORE_COMMIT).unlink(missing_ok=True)
        finish(job)  # the next attempt follows at once
    submit_and_wait(cluster, run_cmd(videos, out))
    assert content(out) == reference
    assert_clean(out)


def _start_llm(cluster: Cluster) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.dense_caption.fake_llm", "--host", NODE_IP, "--port", str(LLM_PORT)]
    server = subprocess.Popen(cluster.ns.cmd(cmd), env=cluster.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    probe = [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen('http://{NODE_IP}:{LLM_PORT}/v1/models', timeout=2)"]
    deadline = time.monotonic() + 60
    while subprocess.run(cluster.ns.cmd(probe), capture_output=True).returncode != 0:
        assert time.monotonic() < deadline and server.poll() is None, "the LLM server did not come up"
        time.sleep(0.2)
    return server


def test_llm_server_killed_mid_run(cluster, videos, tmp_path):
    server = _start_llm(cluster)
    try:
        clean = tmp_path / "clean"
        submit_and_wait(cluster, run_cmd(videos, clean, *LLM))
        expected = content(clean)
        assert all(Sample(sample, key).conversations for tar in (clean / "shards").glob("*.tar")
                   for key, sample in iter_tar_samples(tar))  # fmt: skip

        out = tmp_path / "run"
        job = cluster.submit(run_cmd(videos, out, *LLM), wait=False)
        wait_for(lambda: list((out / "shards").glob("*.tar")) if (out / "shards").exists() else None, job,
                 what="a first shard")  # fmt: skip
        # the process nsenter started is the server itself: SIGKILL it, as an OOM kill would
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(3)  # requests fail against a dead port meanwhile, and are retried
        server = _start_llm(cluster)
        rc, log = finish(job)
        assert rc == 0, log[-4000:]
        assert content(out) == expected
        assert_clean(out)
    finally:
        server.kill()
        server.wait()


def test_output_disk_full_then_freed(cluster, videos, reference_run, reference, tmp_path):
    disk = tmp_path / "disk"  # a 16 MiB tmpfs in the cluster's mount namespace
    disk.mkdir()
    subprocess.run(cluster.ns.cmd(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)]), check=True, timeout=30)
    try:
        seen = cluster.ns.path(disk)
        out = disk / "run"
        need = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(reference_run) for f in fs)
        free = shutil.disk_usage(seen).free
        ballast = seen / "ballast"
        with open(ballast, "wb") as fh:  # leave room for about half the run
            fh.truncate(0)
            chunk = b"\0" * (1 << 20)
            left = free - need // 2
            while left > 0:
                fh.write(chunk[: min(len(chunk), left)])
                left -= len(chunk)
        rc, log = finish(cluster.submit(run_cmd(videos, out)))
        assert rc != 0, "a run that could not write its samples must not succeed"
        assert "error: no space left on device" in log, log[-6000:]  # one line, exit 6
        ballast.unlink()  # the disk is freed; the next run finishes the work
        submit_and_wait(cluster, run_cmd(videos, out))
        assert content(cluster.ns.path(out)) == reference
        assert_clean(cluster.ns.path(out))
    finally:
        subprocess.run(cluster.ns.cmd(["umount", "-l", str(disk)]), timeout=30)
