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
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from pydantic import SecretStr

from dense_caption.http_backend import ServerUnavailable, check_server
from dense_caption.config import LLMConfig

if TYPE_CHECKING:
    from dense_caption.managed import ManagedServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMEndpoints:
    """Where the run's LLM answers, known once its service is up: what the caption and QA workers call."""

    http_url: str  # the http backend's server (a managed one's address, reachable from the workers)
    engine_urls: tuple[str, ...] = ()  # the ray_engine backend's replicas
    run_key: SecretStr | None = None  # the key the replicas take (made for this run, never written out)


@contextmanager
def llm_service(llm: LLMConfig, log_dir: Path, start_ray: Callable[[], None]) -> Iterator[LLMEndpoints]:
    """Check or start the LLM the run's caption/QA stages use; yield where it answers, stop it afterwards (a run
    enters it when its plan has caption or QA stages).

    `start_ray` connects to the run's Ray cluster; the engine backend calls it before placing its replicas.
    """
    if llm.backend == "ray_engine":
        from dense_caption.ray_engine import start_replicas, stop_replicas

        start_ray()
        handles, urls, key = start_replicas(llm)
        try:
            yield LLMEndpoints(llm.http.url, tuple(urls), SecretStr(key))
        finally:
            stop_replicas(handles)
        return
    if llm.http.mode == "external":
        served = check_server(llm.http.url, llm.model, llm.http)
        log.info("LLM server %s serves %s", llm.http.url, served)
        yield LLMEndpoints(llm.http.url)
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
    keeper = ServerKeeper(server, m.max_restarts)
    url = reachable_url(server.url, m.host)
    try:
        check_server(url, llm.model, llm.http)
        keeper.start()
        yield LLMEndpoints(url)
    finally:
        keeper.stop()
        server.stop()


def reachable_url(url: str, host: str) -> str:
    """A server listening on every interface is reached through this node's address (workers may be elsewhere)."""
    if host not in ("0.0.0.0", "::", ""):
        return url
    import socket

    return url.replace(f"//{host}:", f"//{socket.gethostbyname(socket.gethostname())}:", 1)


class ServerKeeper(threading.Thread):
    """Restarts a managed server that dies mid-run (same port), so the workers' retries find it back."""

    def __init__(self, server: "ManagedServer", max_restarts: int, poll_s: float = 1.0):
        super().__init__(name="llm-server-keeper", daemon=True)
        self.server, self.max_restarts, self.poll_s = server, max_restarts, poll_s
        self.restarts = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.poll_s):
            proc = self.server.proc
            if proc is None or proc.poll() is None:
                continue
            if self.restarts >= self.max_restarts:
                log.error("the managed LLM server died (exit %s) and max_restarts=%d is used up", proc.returncode, self.max_restarts)
                return
            self.restarts += 1
            log.warning("the managed LLM server died (exit %s); restart %d of %d", proc.returncode, self.restarts, self.max_restarts)
            try:
                self.server.stop()  # reap what is left of its process group
                if not self._stopping.is_set():
                    self.server.start()
            except Exception as e:  # the workers' retries run out and their videos become llm_unavailable rejects
                log.error("restarting the managed LLM server failed: %s", e)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=self.server.startup_timeout_s + 30)
