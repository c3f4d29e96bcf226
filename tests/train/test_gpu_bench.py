"""`bench/train.py --gpu` runs the trainer's step on the CPU with the tiny shape (the code a GPU machine runs with
the 7B shape), and reports what the README's GPU figures come from (figures not asserted: the machine may be busy)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_runs_its_step_on_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), "--gpu", "--shape", "tiny", "--device", "cpu",
                           "--frames", "4", "--steps", "1", "--json"], capture_output=True, text=True, env=env,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    result = report["result"]
    assert result["shape"] == "tiny" and result["attention"] == "sdpa" and report["did_not_fit"] == []
    assert result["tokens"] == 16 + 4 * 20 + 512  # prompt, 4 frames of 4x(4+1) tokens, the conversation
    assert result["flops_per_step"] > 6 * 1e5 * result["tokens"] and math.isfinite(result["loss"])
    assert result["step_s"] > 0 and result["mfu"] is None and report["targets"] == []  # no peak known for a CPU
