"""A run's counts come from what it committed: the shards its writers named with the run's stamp, whatever
reached the driver. A writer that committed and then died with its worker left the driver short; the run
reports the committed counts and keeps the driver's tally beside them, with one line that says so."""

from __future__ import annotations

import logging

from pipeline.core.records import WriteTotals
from pipeline.run_base import RunSummary, reconcile
from shards.runfolder import writer_shard_name
from shards.rows import committed_by_run

STAMP = "20261207120000"


def record(stamp: str, task: int, keys: list[str], held_out: bool = False, settled: bool = False) -> dict:
    name = writer_shard_name("shard", stamp, task, f"{task:08x}", held_out, 0)
    if settled:  # a settle's rewrite keeps the writer's name and adds its own mark
        name = name[:-4] + ".s0000abcd.tar"
    return {"name": name, "bytes": 1000 * len(keys), "rows": [{"key": k} for k in keys]}


def test_the_runs_own_shards_are_counted_by_their_stamp():
    records = [record(STAMP, 1, ["a", "b"]), record(STAMP, 2, ["c"], held_out=True), record(STAMP, 3, ["d"], settled=True),
               record("20261206090000", 1, ["e", "f", "g"])]  # an earlier run's
    assert committed_by_run(records, STAMP) == {"shards": 3, "samples": 4, "bytes": 4000}


def test_a_driver_that_heard_of_less_than_was_committed_reports_the_commits(caplog):
    summary = RunSummary(out_dir="out", sources=6, skipped=0, accepted=4, rejected={}, samples_total=6, rejects_total=0,
                         wall_s=1.0)  # fmt: skip
    written = WriteTotals(samples=4, shards=[{"bytes": 10}, {"bytes": 10}])
    with caplog.at_level(logging.WARNING):
        tally = reconcile(summary, written, {"shards": 3, "samples": 6, "bytes": 30})
    assert summary.accepted == 6 and tally == {"accepted": 4, "shards_written": 2}
    assert "committed 6 samples in 3 shards; its driver heard of 4 in 2" in caplog.text
    same = RunSummary(out_dir="out", sources=6, skipped=0, accepted=6, rejected={}, samples_total=6, rejects_total=0,
                      wall_s=1.0)  # fmt: skip
    assert reconcile(same, WriteTotals(samples=6, shards=[{}] * 3), {"shards": 3, "samples": 6, "bytes": 30}) is None
