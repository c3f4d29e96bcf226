"""The embedded Ray of a local run: reachable from this machine only, and only with a token made for the run.

On Linux, Ray turns a loopback node address into the machine's interface address (so that other nodes can
join) and its GCS, raylet, object manager, workers and agents then listen on every interface. On macOS and
Windows, where Ray keeps clusters to one machine, the node address stays on loopback and every one of those
services listens there only; the embedded cluster asks for that behaviour while `ray.init` starts it.

Loopback still lets the machine's other users in, so the cluster also demands Ray's token authentication with
a token made for this run. The token lives only in the environment of the processes Ray starts (and in the
driver's Ray core): no file holds it, and the driver's environment is given back as it was once Ray is up, so
processes the driver starts later (a restarted LLM server) do not inherit it. The driver's Ray core keeps the
run's token after `ray.shutdown()`: a program that then starts another local Ray in the same process does so
through `init_ray` (a new token), not a bare `ray.init()`.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from typing import Any

log = logging.getLogger(__name__)

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def start_local_ray(kwargs: dict[str, Any]) -> None:
    """`ray.init(**kwargs)` for a new local cluster, on loopback and behind a token made for this run."""
    import ray

    with _run_token(), _loopback_node():
        ray.init(**kwargs)
    node = ray.util.get_node_ip_address()
    if not is_loopback(node):  # a Ray that no longer keeps the node local: the token still guards it
        log.warning("the embedded Ray listens on %s, not loopback; it demands the run's token", node)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped form."""
    try:
        addr = ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray's one-machine mode (its default on macOS and Windows): the node address stays loopback, so every
    service Ray starts listens there. Only for the start: connecting to a cluster later needs the real address."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextmanager
def _run_token() -> Iterator[None]:
    """Token mode and a fresh token in the environment the Ray processes inherit; the user's RAY_AUTH_*
    (meant for their clusters) come back afterwards. Ray's core keeps the mode and the token it loaded."""
    from ray._raylet import AuthenticationTokenLoader, Config

    saved = {name: os.environ.get(name) for name in AUTH_VARS}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    # The driver's Ray core read RAY_AUTH_MODE on import: it reads it again (as Ray's own default does when it turns
    # token mode on) and drops a token it may have loaded before (~/.ray/auth_token).
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield
    except BaseException:
        _restore(saved)
        Config.initialize("")  # no cluster came up: the driver goes back to the user's settings
        AuthenticationTokenLoader.instance().reset_cache()
        raise
    _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
