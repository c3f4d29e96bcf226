"""Which pools a cluster can no longer serve (`ray.resource_wait_s`); the chaos suite ends a run whose every
worker node is gone this way and resumes it (tests/chaos/test_chaos.py)."""

from __future__ import annotations

import pytest

from pipeline.core.config_load import ConfigError
from pipeline.resource_watch import lacking, pool_needs
from pipeline.run_config import load_run_config


def test_the_pools_needs_come_from_the_resources_config():
    cfg = load_run_config(None, ["input.path=.", "output.dir=out", "resources.video.num_cpus=2"])
    assert pool_needs(cfg) == {"video": {"CPU": 2.0}}  # the writer asks nothing: it runs on any node
    gpu = load_run_config(None, ["input.path=.", "output.dir=out", "filters.clip.enabled=true",
                                 "resources.clip.num_gpus=1", "resources.clip.num_cpus=0"])
    assert pool_needs(gpu) == {"video": {"CPU": 1.0}, "clip": {"GPU": 1.0}}
    assert cfg.ray.resource_wait_s == 600
    with pytest.raises(ConfigError, match="ray.resource_wait_s"):
        load_run_config(None, ["input.path=.", "output.dir=out", "ray.resource_wait_s=-1"])


def test_a_pool_lacks_a_node_only_when_no_alive_node_fits_one_task():
    needs = {"video": {"CPU": 2.0}, "clip": {"GPU": 1.0}}
    head = {"Alive": True, "Resources": {"CPU": 0.0}}
    worker = {"Alive": True, "Resources": {"CPU": 4.0}}
    assert lacking(needs, [head, worker]) == {"clip": {"GPU": 1.0}}
    assert lacking(needs, [head, {**worker, "Alive": False}]) == needs  # every worker node gone
    assert lacking(needs, [head, {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}}]) == {"video": {"CPU": 2.0}}
    assert lacking(needs, [worker, {"Alive": True, "Resources": {"GPU": 2.0}}]) == {}


def test_a_main_thread_blocked_in_a_wait_is_woken_and_ends_with_the_line(monkeypatch):
    import threading

    import ray

    from pipeline.resource_watch import ResourcesGone, resource_watch

    # The fault is Ray's answer (every worker node gone), as the chaos suite produces it for real; here the
    # main thread's side: a wait with no timeout (as a consumer of the graph's output waits) must end.
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 0.0}}])
    cfg = load_run_config(None, ["input.path=.", "output.dir=out", "ray.resource_wait_s=0.2"])
    with pytest.raises(ResourcesGone, match=r"0.2 s \(ray.resource_wait_s\): video \(needs 1 CPU\)"):
        with resource_watch(cfg, poll_s=0.05):
            threading.Event().wait()  # would block forever
    with resource_watch(cfg, poll_s=0.05):
        pass  # a block that ends first: nothing fires later
    threading.Event().wait(0.5)
