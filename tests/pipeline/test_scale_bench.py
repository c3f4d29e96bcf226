"""bench/scale.py --quick --json runs and reports every measurement (its figures are not asserted: the machine may be busy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scale_bench_reports_every_measurement(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--json", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [d["rows"] for d in report["dispatch"]] == report["config"]["sources"]
    for d in report["dispatch"]:
        assert d["dispatched"] == d["sources"] == d["rows"] and d["waves"] >= 1
        assert d["first_dispatch_s"] > 0 and d["peak_rss_mb"] > 0 and "rss_growth_mb" in d
    ledger = report["ledger"]
    assert ledger["ledger_rows"] == report["config"]["ledger_rows"] and ledger["to_do"] == ledger["ledger_rows"] // 2
    assert all(ledger[k] >= 0 for k in ("resume_s", "tables_s", "stats_s"))
    assert {t["name"] for t in report["targets"]} == {
        "dispatch/first_dispatch_largest_over_smallest", "dispatch/peak_rss_growth_middle_to_largest_mb",
        "resume/bookkeeping_s", "stats/compute_s"}
    assert all(isinstance(t["met"], bool) for t in report["targets"])
    assert not list(tmp_path.iterdir())  # its work folder is removed
