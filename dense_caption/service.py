"""The LLM service of one run: checked (external), started (managed, ray_engine) and stopped around the stages.

Everything that can make captioning impossible is found here, before the run
touches the output: an unreachable server, a model it does not serve, a
missing API key, a managed server that never comes up, a cluster without
GPUs for the engine backend. Each raises `ServerUnavailable` with a message
that says what to fix.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dense_caption.http_backend import ServerUnavailable, check_server
from pipeline.config import RunConfig

log = logging.getLogger(__name__)


def _with(cfg: RunConfig, **llm_updates: object) -> RunConfig:
    return cfg.model_copy(update={"llm": cfg.llm.model_copy(update=llm_updates)})


@contextmanager
def llm_service(cfg: RunConfig, log_dir: Path) -> Iterator[RunConfig]:
    """Yield the config the stages run with (it carries the URLs of servers started here)."""
    llm = cfg.llm
    if not llm.enabled or not (llm.captions.enabled or llm.qa.enabled):
        yield cfg
        return
    if llm.backend == "ray_engine":
        from dense_caption.ray_engine import start_replicas, stop_replicas
        from pipeline.run import init_ray

        init_ray(cfg)
        handles, urls = start_replicas(llm)
        try:
            yield _with(cfg, engine=llm.engine.model_copy(update={"urls": urls}))
        finally:
            stop_replicas(handles)
        return
    if llm.http.mode == "external":
        served = check_server(llm.http.url, llm.model, llm.http)
        log.info("LLM server %s serves %s", llm.http.url, served)
        yield cfg
        return
    from dense_caption.managed import ManagedServer, ServerStartError

    m = llm.http.managed
    log_dir.mkdir(parents=True, exist_ok=True)
    server = ManagedServer(
        m.model, python=m.python or sys.executable, log_path=log_dir / "llm-server.log", served_model_name=llm.model,
        host=m.host, port=m.port, extra_args=m.args, env=m.env, startup_timeout_s=m.startup_timeout_s,
    )  # fmt: skip
    try:
        server.start()
    except ServerStartError as e:
        raise ServerUnavailable(f"the managed LLM server did not come up: {e}") from None
    try:
        check_server(server.url, llm.model, llm.http)
        yield _with(cfg, http=llm.http.model_copy(update={"url": server.url}))
    finally:
        server.stop()
