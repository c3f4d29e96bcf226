"""`ray.resource_wait_s`: a run whose pools cannot get what their tasks ask for ends instead of waiting forever.

Ray Data waits for resources without limit (a cluster whose every worker node is gone only logs that it "may
hang forever"). While the run's graph runs, a thread compares the cluster's resources with what one task of
each pool asks; when some pool has found no node for `ray.resource_wait_s`, the driver's main thread is
interrupted and the run ends with `ResourcesGone` (its own exit code, one line naming the pools and what they
lack). What was committed stays committed: a rerun resumes once the nodes are back.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.run_config import RunConfig


log = logging.getLogger(__name__)
EXIT_CODE = 7  # the command line's for ResourcesGone (pipeline/cli.py EXIT_CODES)
WAKE = signal.SIGUSR2  # the watcher's signal to the driver's main thread while the block runs


class ResourcesGone(RuntimeError):
    """No node could run some pool's tasks for `ray.resource_wait_s`."""


def pool_needs(cfg: RunConfig) -> dict[str, dict[str, float]]:
    """Per pool, what one of its tasks reserves (only what is not zero: a zero-CPU writer runs on any node)."""
    pools = {"video": cfg.resources.video}
    if cfg.filters.clip.enabled:
        pools["clip"] = cfg.resources.clip
    out = {}
    for name, res in pools.items():
        needs = {k: v for k, v in (("CPU", res.num_cpus), ("GPU", res.num_gpus)) if v > 0}
        if needs:
            out[name] = needs
    return out


def lacking(needs: dict[str, dict[str, float]], nodes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The pools no alive node can run one task of (a node's total resources, as `ray.nodes()` gives them)."""
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive")]
    return {pool: want for pool, want in needs.items()
            if not any(all(have.get(k, 0) >= v for k, v in want.items()) for have in alive)}


@contextmanager
def resource_watch(cfg: RunConfig, poll_s: float = 2.0) -> Iterator[None]:
    """Run the block; end it with ResourcesGone once a pool has had no node for `cfg.ray.resource_wait_s`."""
    wait_s, needs = cfg.ray.resource_wait_s, pool_needs(cfg)
    if not wait_s or not needs or threading.current_thread() is not threading.main_thread():
        yield  # (a run driven from another thread cannot be interrupted: it waits as Ray does)
        return
    stop, fired = threading.Event(), []

    def watch() -> None:
        import ray

        since = None
        while not stop.wait(poll_s):
            if not ray.is_initialized():
                continue  # the first wave starts Ray
            try:
                missing = lacking(needs, ray.nodes())
            except Exception:  # the GCS unreachable for a moment: judged at the next poll
                continue
            if not missing:
                since = None
            elif since is None:
                since = time.monotonic()
                log.warning("no alive node can run a task of %s: the run ends in %g s (ray.resource_wait_s) unless "
                            "one comes back", _named(missing), wait_s)
            elif time.monotonic() - since >= wait_s:
                fired.append(missing)
                _signal_main()
                _exit_unless_left(stop, _message(missing, wait_s))
                return

    def fire(signum: int, frame: Any) -> None:
        if not stop.is_set():  # a signal that comes after the block ended is nothing
            raise _Fired()

    previous = signal.signal(WAKE, fire)
    thread = threading.Thread(target=watch, name="resource-watch", daemon=True)
    thread.start()
    try:
        yield
    except _Fired:
        raise ResourcesGone(_message(fired[0], wait_s)) from None
    finally:
        stop.set()
        # never back to the default action (ending the process) while a late signal may be on its way
        signal.signal(WAKE, signal.SIG_IGN if previous in (signal.SIG_DFL, None) else previous)


class _Fired(BaseException):
    """Raised in the main thread by the watcher's signal: a BaseException, so no `except Exception` of the
    graph's libraries takes it for a task error."""


def _named(missing: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{pool} (needs {', '.join(f'{v:g} {k}' for k, v in want.items())})" for pool, want in missing.items())


def _message(missing: dict[str, dict[str, float]], wait_s: float) -> str:
    return (f"no node could run a task for {wait_s:g} s (ray.resource_wait_s): {_named(missing)}; what was committed "
            "stays, rerun once the cluster has such nodes again to resume")


def _signal_main() -> None:
    """The watcher's signal to the main thread: a blocking wait there returns, and its handler raises `_Fired`."""
    try:
        signal.pthread_kill(threading.main_thread().ident or 0, WAKE)
    except (OSError, ValueError):
        pass


def _exit_unless_left(done: threading.Event, message: str, grace_s: float = 60.0) -> None:
    """A main thread that has not left the watched block `grace_s` after the signal ends the process with the
    same line and exit code (what it committed stays; a managed LLM server it started is not stopped)."""
    if not done.wait(grace_s):
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)
