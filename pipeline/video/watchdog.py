"""Run a function in a watched child process: a call that hangs or balloons is killed, not waited on.

Decoders are C code: a pathological file can spin forever or allocate until
the node's OOM killer takes the whole Ray worker (and every video in it). The
decode stage therefore runs `extract_frames` in one long-lived child per
worker; the parent polls it and kills it past the time or RSS limit. The child
is restarted on the next call. Results come back pickled over a pipe (JPEG
bytes, a few MB per video).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, Callable

import psutil


class CallTimeout(Exception):
    pass


class CallOverMemory(Exception):
    pass


class ChildDied(Exception):
    pass


def _child_loop(conn: Any) -> None:
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            conn.send(("ok", fn(*args, **kwargs)))
        except BaseException as e:  # sent back and re-raised in the parent
            try:
                conn.send(("error", e))
            except Exception:
                conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))


class WatchedProcess:
    """One reusable child process; `call` returns fn's result or raises its exception / a cut-off."""

    def __init__(self, poll_s: float = 0.05):
        self.poll_s = poll_s
        self._proc: Any = None
        self._conn: Any = None

    def start(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")  # never fork a threaded Ray worker
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_loop, args=(child,), daemon=True, name="prolongvid-decode")
        self._proc.start()
        child.close()
        self._conn = parent

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float, max_rss_mb: int, **kwargs: Any) -> Any:
        self.start()
        ps = psutil.Process(self._proc.pid)
        self._conn.send((fn, args, kwargs))
        start = time.monotonic()
        peak = 0
        while not self._conn.poll(self.poll_s):
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self.stop()
                raise ChildDied(f"decode process died (exit code {code})")
            elapsed = time.monotonic() - start
            if elapsed > timeout_s:
                self.stop()
                raise CallTimeout(f"killed after {elapsed:.1f}s (limit {timeout_s:g}s)")
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:
                continue
            if peak > max_rss_mb * 1024 * 1024:
                self.stop()
                raise CallOverMemory(f"killed at {peak / 2**20:.0f} MB RSS (limit {max_rss_mb} MB)")
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as e:
            self.stop()
            raise ChildDied(f"decode process died while replying ({e})") from None
        if status == "error":
            raise value
        return value
