"""The commit protocol on its own: generations, one commit per key, stale markers, damaged shards."""

from __future__ import annotations

import pytest

from shards import ledger
from shards.commit import StaleWriter, begin_generation, commit_shard, committed_in, key_marker
from shards.layout import RunDir, sample_from_sections
from shards.reader import iter_tar_samples
from shards.tarwriter import ShardFile


def _shard(run: RunDir, name: str, keys: list[str]):
    f = ShardFile(run.shards, name)
    for k in keys:
        f.write(sample_from_sections(k, [b"\xff\xd8" + k.encode() * 50 + b"\xff\xd9"], {"key": k}, []))
    return f.close(), [{"key": k, "shard": name, "frames_stored": 1} for k in keys]


def test_a_writer_of_an_older_attempt_cannot_commit(tmp_path):
    run = RunDir(tmp_path).make()
    old = begin_generation(run)
    info, rows = _shard(run, "orphan.tar", ["a", "b"])
    new = begin_generation(run)  # a restarted run began while the orphan was still writing
    assert new == old + 1
    with pytest.raises(StaleWriter):
        commit_shard(run, old, info, rows)
    assert not (run.shards / "orphan.tar").exists() and ledger.shard_records(run) == []
    assert committed_in(run, "a") is None


def test_a_second_copy_of_a_key_is_dropped_and_its_shard_rewritten(tmp_path):
    run = RunDir(tmp_path).make()
    gen = begin_generation(run)
    first, rows = _shard(run, "first.tar", ["a", "b"])
    commit_shard(run, gen, first, rows)
    retry, rows = _shard(run, "retry.tar", ["b", "c"])  # a retried task wrote b again
    committed, kept = commit_shard(run, gen, retry, rows)
    assert [r["key"] for r in kept] == ["c"] and committed.samples == 1
    assert [k for k, _ in iter_tar_samples(run.shards / "retry.tar")] == ["c"]
    assert committed.bytes == (run.shards / "retry.tar").stat().st_size
    again, rows = _shard(run, "again.tar", ["a", "b"])  # nothing new: no shard at all
    assert commit_shard(run, gen, again, rows) == (None, [])
    assert not (run.shards / "again.tar").exists()
    assert ledger.write_tables(run) == (3, 0)
    assert committed_in(run, "b") == "first.tar"


def test_a_marker_without_its_record_counts_for_nothing(tmp_path):
    run = RunDir(tmp_path).make()
    gen = begin_generation(run)
    marker = key_marker(run, "a")  # a commit that died between its markers and its record
    marker.parent.mkdir(parents=True)
    marker.write_text("died.tar")
    assert committed_in(run, "a") is None
    info, rows = _shard(run, "s.tar", ["a"])
    assert commit_shard(run, gen, info, rows)[1] == rows


def test_force_keeps_the_generation_so_old_writers_stay_locked_out(tmp_path):
    run = RunDir(tmp_path).make()
    old = begin_generation(run)
    ledger.reset(run)
    run.make()
    assert begin_generation(run) == old + 1


def test_damaged_and_duplicate_shards_are_found_and_dropped(tmp_path):
    run = RunDir(tmp_path).make()
    gen = begin_generation(run)
    for name, keys in (("s1.tar", ["a", "b"]), ("s2.tar", ["c"]), ("s3.tar", ["d"])):
        commit_shard(run, gen, *_shard(run, name, keys))
    data = bytearray((run.shards / "s2.tar").read_bytes())
    data[600] ^= 0xFF  # a flipped byte: same size
    (run.shards / "s2.tar").write_bytes(bytes(data))
    with open(run.shards / "s3.tar", "r+b") as f:
        f.truncate(1024)
    assert ledger.damaged_shards(run) == {"s3.tar": "1024 bytes, 10240 recorded"}  # size: every run sees it
    assert set(ledger.damaged_shards(run, checksums=True)) == {"s2.tar", "s3.tar"}  # sha256: --repair
    assert sorted(ledger.drop_shards(run, ["s2.tar", "s3.tar"])) == ["c", "d"]
    assert committed_in(run, "c") is None and committed_in(run, "a") == "s1.tar"
    assert [r["name"] for r in ledger.shard_records(run)] == ["s1.tar"]


def test_a_key_in_two_records_is_corruption_that_repair_removes(tmp_path):
    run = RunDir(tmp_path).make()
    for name, keys in (("s1.tar", ["a", "b"]), ("s2.tar", ["b", "c"])):  # as an unguarded retry would have left it
        info, rows = _shard(run, name, keys)
        ledger.write_shard_record(run, info.__dict__, rows)
    with pytest.raises(ledger.DuplicateKeys, match="key b is committed in s1.tar and s2.tar"):
        ledger.write_tables(run)
    assert ledger.damaged_shards(run) == {"s2.tar": "holds 1 key(s) shard s1.tar already holds, e.g. b"}
    assert ledger.drop_shards(run, ["s2.tar"]) == ["b", "c"]
    assert ledger.write_tables(run) == (2, 0)
