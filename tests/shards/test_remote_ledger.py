"""The ledger of a run folder on an object store, against a real S3 API server on loopback: the lease (one driver,
a new generation per taking, takeover of a stale or released lease by exactly one), create-only commits, a stale
writer committing nothing, and settling: duplicate keys kept once, a rewrite finished after a crash, a record
whose tar is gone dropped, orphans removed (only the writer's names), readers seeing only what is settled."""

from __future__ import annotations

import threading

import pytest

from fixtures.s3server import make_bucket, s3_env, s3_server
from pipeline.core.records import Rejection
from pipeline.core.storage import Storage
from shards import remote_lease as rlease
from shards import remote_ledger as rl
from shards.commit import StaleWriter
from shards.layout import sample_from_sections
from shards.reader import iter_tar_samples
from shards.remote import remote_shard_urls
from shards.runfolder import RefusedFolder, writer_shard_name
from shards.tarwriter import ShardFile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as url:
        make_bucket(url, "runs")
        yield url


@pytest.fixture
def store(endpoint, monkeypatch, request):
    for k, v in s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    return Storage(f"s3://runs/{request.node.name[:40]}")


def name(task: int, seq: int = 0) -> str:
    return writer_shard_name("shard", "20261207000000", task, f"{task:08x}", False, seq)


def tar(tmp_path, shard: str, keys: list[str]):
    f = ShardFile(tmp_path, shard)
    for k in keys:
        f.write(sample_from_sections(k, [b"\xff\xd8" + k.encode() * 50 + b"\xff\xd9"], {"key": k}, []))
    return tmp_path / shard, f.close(), [{"key": k, "shard": shard, "frames_stored": 1} for k in keys]


def commit(store, gen, tmp_path, shard, keys):
    path, info, rows = tar(tmp_path, shard, keys)
    rl.commit_shard(store, gen, path, info, rows)


def counts(tables) -> tuple[int, int]:
    return tables.index.num_rows, tables.rejects.num_rows


def keys_in(store, shard: str) -> list[str]:
    from shards.remote import open_stream

    return [k for k, _ in iter_tar_samples(open_stream(store.url(f"shards/{shard}")))]


def test_a_prefix_with_foreign_objects_is_refused_and_an_empty_one_claimed(store):
    rl.claim_folder(store)
    assert store.exists(rl.MARKER)
    rl.claim_folder(store)  # a run folder already: fine
    other = Storage(store.root + "-foreign")
    other.put("photos/cat.jpg", b"meow")
    with pytest.raises(RefusedFolder, match="cat.jpg"):
        rl.claim_folder(other)
    assert [i.path for p in other.list_pages() for i in p] == ["photos/cat.jpg"]


def test_one_driver_holds_the_lease_and_each_taking_is_a_new_generation(store):
    now = [1000.0]
    first = rlease.take_lease(store, ttl_s=60, clock=lambda: now[0])
    assert first.generation == 1 and rlease.lease_generation(store) == 1
    with pytest.raises(rlease.RunInProgress, match="being written by"):
        rlease.take_lease(store, ttl_s=60, clock=lambda: now[0])
    now[0] += 30
    first.renew()
    now[0] += 45  # 45 s after the renewal: still held
    with pytest.raises(rlease.RunInProgress):
        rlease.take_lease(store, ttl_s=60, clock=lambda: now[0])
    first.release()
    second = rlease.take_lease(store, ttl_s=60, clock=lambda: now[0])
    assert second.generation == 2
    now[0] += 61  # the second driver stalled past its time to live
    third = rlease.take_lease(store, ttl_s=60, clock=lambda: now[0])
    assert third.generation == 3
    with pytest.raises(rlease.LeaseLost):
        second.renew()
    second.release()  # taken over: left as it is
    assert rlease.lease_generation(store) == 3


def test_exactly_one_of_many_drivers_takes_a_stale_lease(store):
    rlease.take_lease(store, ttl_s=1, clock=lambda: 0.0)
    won, lost = [], []

    def take():
        try:
            won.append(rlease.take_lease(store, ttl_s=60, clock=lambda: 100.0).generation)
        except rlease.RunInProgress:
            lost.append(1)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won == [2] and len(lost) == 5


def test_a_writer_of_an_older_generation_commits_nothing(store, tmp_path):
    old = rlease.take_lease(store, ttl_s=1, clock=lambda: 0.0)
    rlease.take_lease(store, ttl_s=60, clock=lambda: 100.0)  # a restarted driver took over
    path, info, rows = tar(tmp_path, name(1), ["a"])
    with pytest.raises(StaleWriter):
        rl.commit_shard(store, old.generation, path, info, rows)
    assert not rl.commit_rejects(store, old.generation, [Rejection("x.mp4", "probe", "corrupt", key="x")])
    assert [i.path for p in store.list_pages() for i in p] == [rlease.LEASE]


def test_settling_keeps_each_key_once_and_readers_see_only_settled_shards(store, tmp_path):
    rl.claim_folder(store)
    gen = rlease.take_lease(store).generation
    commit(store, gen, tmp_path, name(1), ["a", "b"])
    commit(store, gen, tmp_path, name(2), ["b", "c"])  # a retried task wrote b again
    commit(store, gen, tmp_path, name(3), ["a", "b"])  # ... and its whole shard again: nothing new in it
    store.put(f"shards/{name(4)}", b"half an upload")  # a killed writer's tar, never recorded
    store.put("shards/notes.txt", b"someone else's")  # not a writer's name: never touched
    rejected = [Rejection("x.mp4", "probe", "corrupt", "bad header", "x", 7)]
    assert rl.commit_rejects(store, gen, rejected) and rl.commit_rejects(store, gen, rejected)  # written twice
    assert remote_shard_urls(store.root) == [store.url(f"shards/{n}") for n in (name(1), name(2), name(3), name(4))]
    done = rl.settle(store)
    assert done == {"replaced": 0, "lost": 0, "deduplicated": 3, "orphans": 1}
    assert counts(rl.write_tables(store)) == (3, 1)
    urls = remote_shard_urls(store.root)
    assert len(urls) == 2 and urls[0] == store.url(f"shards/{name(1)}")
    held = {k: u.rpartition("/")[2] for u in urls for k in keys_in(store, u.rpartition("/")[2])}
    assert sorted(held) == ["a", "b", "c"] and held["a"] == held["b"] == name(1)
    assert held["c"].startswith(name(2)[:-4] + ".s")  # the retry's shard rewritten without b
    left = sorted(i.path for p in store.list_pages("shards/") for i in p)
    assert left == sorted([f"shards/{name(1)}", f"shards/{held['c']}", "shards/notes.txt"])
    assert rl.settle(store) == {"replaced": 0, "lost": 0, "deduplicated": 0, "orphans": 0}  # settled stays settled


def test_a_settle_killed_mid_rewrite_is_finished_and_a_lost_tar_dropped(store, tmp_path):
    gen = rlease.take_lease(store).generation
    commit(store, gen, tmp_path, name(1), ["a"])
    commit(store, gen, tmp_path, name(2), ["a", "b"])
    record = next(r for r in rl.shard_records(store) if r["name"] == name(2))
    path, info, rows = tar(tmp_path, name(2)[:-4] + ".s0000abcd.tar", ["b"])  # the rewrite was committed ...
    store.put(f"shards/{info.name}", path, create_only=True)
    store.put(f"{rl.RECORDS}{info.name}.json", __import__("json").dumps(
        {**info.__dict__, "rows": rows, "generation": gen, "replaces": record["name"]}).encode(), create_only=True)
    commit(store, gen, tmp_path, name(3), ["z"])
    store.delete(f"shards/{name(3)}")  # ... and this record's tar is gone
    assert rl.settle(store) == {"replaced": 1, "lost": 1, "deduplicated": 0, "orphans": 0}
    assert [r["name"] for r in rl.shard_records(store)] == [name(1), info.name]
    assert counts(rl.write_tables(store)) == (2, 0)


def test_a_kept_lease_is_renewed_and_released_and_a_lost_one_raises(store):
    import json
    import time

    with rlease.take_lease(store, ttl_s=2).kept() as lease:
        first = json.loads(store.get(rlease.LEASE))["renewed_at"]
        time.sleep(1.5)
        assert json.loads(store.get(rlease.LEASE))["renewed_at"] > first  # renewed while the block ran
        with pytest.raises(rlease.RunInProgress):
            rlease.take_lease(store, ttl_s=2)
    assert json.loads(store.get(rlease.LEASE))["released"] and rlease.take_lease(store).generation == lease.generation + 1
    store.delete(rlease.LEASE)
    stalled = rlease.take_lease(store, ttl_s=0.4)
    with pytest.raises(rlease.LeaseLost):
        with stalled.kept():
            rlease.take_lease(store, ttl_s=60, clock=lambda: time.time() + 10)  # another driver took it over


def test_a_lease_whose_holder_died_on_this_machine_is_free_at_once(store):
    import json
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = rlease.take_lease(store, ttl_s=600)
    body = json.loads(store.get(rlease.LEASE))
    store.put(rlease.LEASE, json.dumps({**body, "owner": body["owner"].replace(f":{__import__('os').getpid()}:",
                                                                          f":{dead.stdout.strip()}:")}).encode())
    assert rlease.take_lease(store, ttl_s=600).generation == held.generation + 1  # a killed driver's: taken over
    with pytest.raises(rlease.RunInProgress):  # a live one's (this process): held
        rlease.take_lease(store, ttl_s=600)


def test_a_killed_writers_unfinished_multipart_upload_is_aborted_and_no_one_elses(store, tmp_path):
    import boto3

    rl.claim_folder(store)
    gen = rlease.take_lease(store).generation
    commit(store, gen, tmp_path, name(1), ["a"])
    client = boto3.client("s3")
    bucket, _, prefix = store.root[len("s3://"):].partition("/")
    started = {}
    for shard in (name(2), "mine.tar"):  # a writer's (killed after its first part), someone else's
        key = f"{prefix}/shards/{shard}"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * (5 << 20))
        started[shard] = upload
    assert rl.settle(store) == {"replaced": 0, "lost": 0, "deduplicated": 0, "orphans": 0, "uploads_aborted": 1}
    left = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/shards/").get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in left] == [(f"{prefix}/shards/mine.tar", started["mine.tar"])]
    assert [r["name"] for r in rl.shard_records(store)] == [name(1)]
    assert rl.settle(store) == {"replaced": 0, "lost": 0, "deduplicated": 0, "orphans": 0}
