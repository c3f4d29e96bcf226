"""`llm.backend: ray_engine`: vLLM engines as Ray actors, one model replica per GPU actor, placed by Ray on the cluster.

Each replica is a Ray actor reserving `engine.gpus_per_replica` GPUs; it runs
vLLM's OpenAI-compatible server on its node's address, so the caption and QA
workers talk to every replica with the same HTTP client, prompts and parsers
as the `http` backend, spreading requests over the replicas by load. (Ray
Data's `ray.data.llm` processors map one prompt to one answer per row; the
caption recursion needs a chain of dependent requests per video, which a
long-lived engine serves without reloading the model.)

Without GPUs in the cluster, Ray would wait forever to place the actors; the
run refuses at start instead.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from dense_caption.client import ChatRequest, ChatResult
from dense_caption.config import LLMConfig
from dense_caption.http_backend import HttpChatBackend, ServerUnavailable


def engine_args(cfg: LLMConfig) -> list[str]:
    """vLLM server arguments for one replica, from `llm.engine` (validated here, on any machine)."""
    e = cfg.engine
    args = ["--tensor-parallel-size", str(max(1, e.gpus_per_replica)), "--max-model-len", str(e.max_model_len)]
    args += ["--max-num-seqs", str(e.batch_size)]
    for name, value in e.engine_kwargs.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, (dict, list)):
            import json

            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def check_gpus(cfg: LLMConfig) -> None:
    """Refuse (instead of hanging) when the cluster cannot place every replica."""
    import ray

    need = cfg.engine.replicas * cfg.engine.gpus_per_replica
    have = float(ray.cluster_resources().get("GPU", 0))
    if need and have < need:
        raise ServerUnavailable(
            f"llm.backend 'ray_engine' needs {need} GPU(s) ({cfg.engine.replicas} replicas x "
            f"{cfg.engine.gpus_per_replica}); the Ray cluster has {have:g}. Use llm.backend 'http' on CPU-only clusters"
        )


class EngineReplica:
    """A Ray actor body: one vLLM server on this node's GPUs."""

    def __init__(self, model: str, served: str, args: list[str], python: str | None, env: dict[str, str],
                 startup_timeout_s: float, key: str):  # fmt: skip
        import ray

        from dense_caption.managed import ManagedServer

        log = Path(tempfile.gettempdir()) / f"prolongvid-vllm-{ray.get_runtime_context().get_actor_id()[:12]}.log"
        self.server = ManagedServer(
            model, python=python or sys.executable, log_path=log, served_model_name=served, env=env,
            host=ray.util.get_node_ip_address(), extra_args=[*args, "--api-key", key], startup_timeout_s=startup_timeout_s,
        )  # fmt: skip  (the key goes to the server's environment, not its argv)

    def start(self) -> str:
        return self.server.start().url

    def stop(self) -> None:
        self.server.stop()


def start_replicas(cfg: LLMConfig) -> tuple[list[Any], list[str], str]:
    """Start every replica and wait until each serves; returns (actor handles, base URLs, the run's API key).

    The replicas listen on their node's address, so each demands a key made for this run; it travels to them
    and to the caption/QA workers as an actor argument through Ray, and no file holds it."""
    import ray

    check_gpus(cfg)
    e = cfg.engine
    actor = ray.remote(num_gpus=e.gpus_per_replica, num_cpus=1 if e.gpus_per_replica else 0)(EngineReplica)
    args = engine_args(cfg)
    key = secrets.token_urlsafe(32)
    handles = [actor.remote(e.model, cfg.model, args, e.python, e.env, e.startup_timeout_s, key) for _ in range(e.replicas)]
    try:
        urls = ray.get([h.start.remote() for h in handles])
    except Exception as e:
        stop_replicas(handles)
        raise ServerUnavailable(f"a vLLM engine replica did not start: {e}") from None
    return handles, urls, key


def stop_replicas(handles: list[Any]) -> None:
    import ray

    for h in handles:
        try:
            ray.get(h.stop.remote(), timeout=60)
        except Exception:
            pass
        ray.kill(h)


class EngineChatBackend:
    """Requests go to the replica with the fewest in flight."""

    def __init__(self, cfg: LLMConfig):
        if not cfg.engine.urls:
            raise ServerUnavailable("llm.engine.urls is empty: the run starts the replicas before the stages")
        key = cfg.engine.run_key.get_secret_value() if cfg.engine.run_key else None
        self.replicas = [HttpChatBackend(url, cfg.model, cfg.http, key=key) for url in cfg.engine.urls]

    async def chat(self, request: ChatRequest) -> ChatResult:
        replica = min(self.replicas, key=lambda r: r.in_flight)
        return await replica.chat(request)

    @property
    def peak_in_flight(self) -> int:
        return sum(r.peak_in_flight for r in self.replicas)

    async def close(self) -> None:
        for r in self.replicas:
            await r.close()
