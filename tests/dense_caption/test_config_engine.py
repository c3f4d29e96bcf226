"""The `llm:` config fails at load naming the field; the ray_engine backend validates on CPU and refuses without GPUs."""

from __future__ import annotations

import pytest

from dense_caption.config import LLMConfig
from dense_caption.http_backend import ServerUnavailable
from dense_caption.ray_engine import engine_args
from pipeline.core.config_load import ConfigError
from pipeline.run_config import load_run_config
from pipeline.run import run_pipeline
from tests.conftest import pipeline_config

BASE = ["input.path=x", "output.dir=y", "llm.enabled=true"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([], "llm.model must name the served model"),
        (["llm.model=m", "llm.qa.types=[count, gossip]"], "unknown QA types ['gossip']"),
        (["llm.model=m", "llm.http.mode=managed"], "managed.model"),
        (["llm.model=m", "llm.http.url=localhost:8000"], "must start with http"),
        (["llm.model=m", "llm.captions.frame_set=nope"], "llm.captions.frame_set 'nope' names no sampling set"),
        (["llm.model=m", "llm.captions.summary_s=5"], "summary_s (5.0) must be at least clip_s"),
        (["llm.model=m", "llm.qa.enabled=true", "llm.captions.enabled=false"], "QA is generated from the dense caption"),
        (["llm.model=m", "llm.http.max_concurrency=0"], "max_concurrency"),
        (["llm.backend=ray_engine"], "llm.engine.model"),
    ],
)
def test_bad_llm_configs_fail_at_load_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_run_config(None, BASE + overrides)
    assert message in str(e.value)


def test_engine_args_come_from_the_config():
    cfg = LLMConfig(
        enabled=True, backend="ray_engine", model="qwen",
        engine={"model": "/models/qwen", "gpus_per_replica": 2, "batch_size": 64, "max_model_len": 65536,
                "engine_kwargs": {"gpu_memory_utilization": 0.9, "enable_prefix_caching": True}},
    )  # fmt: skip
    args = engine_args(cfg)
    assert args[:6] == ["--tensor-parallel-size", "2", "--max-model-len", "65536", "--max-num-seqs", "64"]
    assert args[6:] == ["--gpu-memory-utilization", "0.9", "--enable-prefix-caching"]


def test_ray_engine_refuses_a_cluster_without_gpus(ray_local, video, tmp_path):
    out = tmp_path / "out"
    cfg = pipeline_config(video("h264_10s").parent, out, "llm.enabled=true", "llm.backend=ray_engine",
                          "llm.model=qwen", "llm.engine.model=/models/qwen")  # fmt: skip
    with pytest.raises(ServerUnavailable, match=r"needs 1 GPU\(s\).*has 0"):
        run_pipeline(cfg)
    assert not out.exists()


def test_llm_workers_are_pinned_to_the_driver_node_only_for_a_loopback_server(ray_local):
    import ray

    from dense_caption.service import LLMEndpoints
    from pipeline.graph import NODE_ID_LABEL, driver_node
    from pipeline.run_plan import resolve_plan

    def pinned(url):
        cfg = load_run_config(None, ["input.path=.", "output.dir=y", "llm.enabled=true", "llm.model=m",
                                     f"llm.http.url={url}"])  # fmt: skip
        return resolve_plan(cfg).pin_llm

    assert pinned("http://127.0.0.1:8000/v1") and pinned("http://localhost:9/v1")
    assert not pinned("http://gpu-node-3:8000/v1")  # reachable from every node: Ray places the actors
    plan = resolve_plan(load_run_config(None, ["input.path=.", "output.dir=y", "llm.enabled=true", "llm.model=m"]))
    assert not plan.served(LLMEndpoints("http://10.1.2.3:8000/v1")).pin_llm  # a managed server on every interface
    assert driver_node() == {NODE_ID_LABEL: ray.get_runtime_context().get_node_id()}


def test_a_managed_server_on_every_interface_is_reached_through_the_node_address():
    import socket

    from dense_caption.service import reachable_url

    assert reachable_url("http://127.0.0.1:8000/v1", "127.0.0.1") == "http://127.0.0.1:8000/v1"
    node = socket.gethostbyname(socket.gethostname())
    assert reachable_url("http://0.0.0.0:8000/v1", "0.0.0.0") == f"http://{node}:8000/v1"
