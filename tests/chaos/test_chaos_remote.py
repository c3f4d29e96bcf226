"""Chaos on object storage: a three-node cluster whose nodes share no filesystem (each its own read-only `/` and
a private tmpfs for Ray's temp dir, TMPDIR and HOME: cluster.py's `own_disks`), runs submitted with `ray job
submit` whose input and output are in buckets of a real S3 API server, reached through a proxy that throttles,
cuts replies and holds uploads open on demand.

Every fault ends equal to a clean run on the same cluster (the sha256 of every member by key), no key twice,
`--verify` clean, no tar, record or unfinished upload in the bucket that shards.json does not list. A node
cannot write outside its own folder, so a job that succeeds wrote nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.s3server import StoreFaults, faulty_proxy, make_bucket, s3_env, s3_server, upload_tree
from fixtures.videos import SynthVideo, make_video
from pipeline.core.storage import Storage
from shards import remote_ledger
from shards.target import FAULT_HOOKS_VAR, FAULT_KILL_AFTER_COMMIT, UPLOAD_SCRATCH
from tests.chaos.cluster import Cluster, Namespace, namespaces_available
from tests.chaos.test_chaos import SETS, finish, wait_for
from tests.contents import assert_remote_clean, remote_content

pytestmark = [pytest.mark.slow, pytest.mark.skipif(namespaces_available() is not None, reason=str(namespaces_available()))]


@dataclass
class World:
    cluster: Cluster
    faults: StoreFaults
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = Path(tempfile.mkdtemp(prefix="chaoss", dir="/tmp"))  # short: Ray's socket paths
    ns = Namespace()
    saved = dict(os.environ)
    try:
        host = ns.link_host()
        with s3_server(root, host=host) as endpoint, faulty_proxy(endpoint, host=host) as (proxy, faults):
            os.environ.update(s3_env(endpoint))  # this process reads the store directly; the nodes via the proxy
            for bucket in ("videos", "runs"):
                make_bucket(endpoint, bucket)
            folder = tmp_path_factory.mktemp("chaos_in")
            for i in range(6):
                make_video(SynthVideo(f"c{i}", duration_s=6 + 2 * i, width=160, height=90, fps=10, audio=False), folder)
            upload_tree(folder, "s3://videos/chaos")
            node_env = {k: v for k, v in s3_env(proxy).items() if k != "HOME"} | {FAULT_HOOKS_VAR: "1"}
            yield World(Cluster(ns, root, own_disks=True, node_env=node_env), faults, tmp_path_factory.mktemp("chk"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        ns.close()
        shutil.rmtree(root, ignore_errors=True)


def run_cmd(url: str) -> list[str]:
    cmd = ["python", "-m", "pipeline", "run", "configs/demo.yaml"]
    for s in ("input.path=s3://videos/chaos/", "input.format=auto", f"output.dir={url}", "ray.progress=false",
              "llm.enabled=false", "shards.max_samples=2", SETS):  # fmt: skip
        cmd += ["--set", s]
    return cmd


def submit_and_wait(cluster: Cluster, cmd: list[str]) -> str:
    rc, log = finish(cluster.submit(cmd))
    assert rc == 0 and "succeeded" in log, log[-4000:]
    return log


@pytest.fixture(scope="module")
def reference(world):
    submit_and_wait(world.cluster, run_cmd("s3://runs/reference"))
    ref = remote_content("s3://runs/reference")
    assert len({key for key, _ in ref}) == 6
    assert_remote_clean("s3://runs/reference", world.tmp / "reference")
    return ref


def uploading_node(cluster: Cluster) -> str | None:
    """A worker node whose write task has a shard in its upload scratch (seen through its raylet's own root)."""
    for name in cluster.workers:
        try:
            raylet = cluster.raylet(name).pid
        except (StopIteration, OSError):
            continue
        scratch = Path(f"/proc/{raylet}/root") / (cluster.root / name / "tmp").relative_to("/")
        if any(scratch.glob(f"{UPLOAD_SCRATCH}*/*.tar")):
            return name
    return None


def test_a_node_cannot_write_outside_its_own_disk(world):
    cluster = world.cluster
    probe = cluster.root.parent / f"{cluster.root.name}-outside"
    raylet = cluster.raylet("w1").pid
    done = subprocess.run(cluster.ns.cmd(["sh", "-c", f"touch {probe}; echo $?"], cwd="/", pid=raylet),
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.stdout.strip() != "0" and not probe.exists()
    mine = subprocess.run(cluster.ns.cmd(["sh", "-c", f"touch {cluster.root}/w1/tmp/x && ls {cluster.root}/w1/tmp"],
                                         cwd="/", pid=raylet), capture_output=True, text=True, timeout=30)  # fmt: skip
    assert mine.stdout.split() == ["x"] and not (cluster.root / "w1" / "tmp" / "x").exists()  # private to w1


def test_worker_node_lost_with_an_upload_open_while_the_store_throttles(world, reference):
    url, cluster, faults = "s3://runs/node-lost", world.cluster, world.faults
    faults.hold = re.compile(r"^PUT /runs/node-lost/shards/[^/?]+\.tar")  # uploads wait, open, until released
    faults.slowdown, faults.drop_reply_every = 14, 11
    try:
        job = cluster.submit(run_cmd(url), wait=False)
        wait_for(lambda: faults.held, job, what="a shard upload was open")
        node = wait_for(lambda: uploading_node(cluster), job, what="a node with a shard in upload")
        cluster.kill_raylet(node)  # its writer lives on for a moment: an orphan whose upload is cut off
    finally:
        faults.release()  # held uploads are cut off unanswered; the rest pass
        faults.slowdown, faults.drop_reply_every = 0, 0
    rc, log = finish(job)
    assert rc == 0, log[-4000:]
    assert remote_content(url) == reference
    assert_remote_clean(url, world.tmp / "node-lost")
    this = json.loads(Storage(url).get("run.json"))["this_run"]  # the counts are what was committed
    assert this["accepted"] == 6 and this["shards_written"] == len(json.loads(Storage(url).get("shards.json")))
    assert faults.injected["slowdown"] >= 14 and faults.injected["held"] >= 1
    cluster.kill_node(node)  # what is left of it (its agents and log monitor outlive the raylet)
    cluster.start_worker(node)  # the next tests get the full cluster back
    cluster.wait_nodes(3)


def test_driver_killed_five_times_and_a_writer_after_its_commit(world, reference):
    url, cluster = "s3://runs/driver-killed", world.cluster
    store = Storage(url)
    remote_ledger.claim_folder(store)  # a run folder, as a run makes it
    store.put(f".ledger/{FAULT_KILL_AFTER_COMMIT}", b"")  # the first writer to commit dies right after it
    for attempt in range(5):
        job = cluster.submit(run_cmd(url), wait=False)
        # kill at different points: as soon as the driver runs, after a commit; the last attempt's orphaned
        # workers may have finished the run meanwhile, and then this one has nothing to do
        if attempt % 2 == 0:
            wait_for(lambda: cluster.drivers(url), job, what="the driver started", done_ok=True)
        else:
            wait_for(lambda: [i for p in store.list_pages(".ledger/shards/") for i in p], job,
                     what="a shard was committed", done_ok=True)  # fmt: skip
        for driver in cluster.drivers(url):
            driver.send_signal(signal.SIGKILL)  # its workers live on as orphans that may still try to commit
        finish(job)  # the next attempt follows at once
    submit_and_wait(cluster, run_cmd(url))
    assert store.get(f".ledger/{FAULT_KILL_AFTER_COMMIT}") == b"taken"  # a writer did die, after its commit
    store.delete(f".ledger/{FAULT_KILL_AFTER_COMMIT}")
    assert remote_content(url) == reference
    assert_remote_clean(url, world.tmp / "driver-killed")
