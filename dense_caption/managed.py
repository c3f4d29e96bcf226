"""Managed mode: start and stop a vLLM OpenAI-compatible server as a subprocess.

Why: in managed mode the pipeline owns the server's lifetime (a local run, the
demo, the tests) instead of pointing at an endpoint someone else runs. The
server is an HTTP peer in its own Python environment (vLLM pins its own torch
and transformers), so it is started by interpreter path, never via a shell.
Machine-specific flags (CPU dtype, KV-cache size, structured-output backend)
are the caller's: they come in as `extra_args` / `env`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

log = logging.getLogger(__name__)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc (Linux); [] where /proc is not there."""
    members = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in (b"Z", b"X"):
            members.append(pid)
    return members


def _take_api_key(args: list[str]) -> tuple[list[str], str | None]:
    """`--api-key X` / `--api-key=X` removed from a server's arguments, and the key."""
    out, key, i = [], None, 0
    while i < len(args):
        arg = str(args[i])
        if arg == "--api-key" and i + 1 < len(args):
            key, i = str(args[i + 1]), i + 2
            continue
        if arg.startswith("--api-key="):
            key = arg.partition("=")[2]
        else:
            out.append(args[i])
        i += 1
    return out, key


def _redacted(argv: Sequence[str]) -> list[str]:
    """argv with the value of any --api-key hidden, for logging."""
    out, hide = [], False
    for arg in argv:
        out.append("***" if hide else ("--api-key=***" if arg.startswith("--api-key=") else arg))
        hide = arg == "--api-key"
    return out


class ServerStartError(RuntimeError):
    """The server exited or never became healthy; the message holds its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: str | os.PathLike, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError as e:
        return f"(no log: {e})"


class ManagedServer:
    """A vLLM server subprocess: started on enter, stopped on exit.

    `python` is the interpreter of the environment vLLM is installed in.
    `port=0` picks a free port. stdout and stderr go to `log_path`. `env`
    adds to (does not replace) this process's environment; it is never
    logged, so secrets in it stay out of logs.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        python: str | os.PathLike,
        log_path: str | os.PathLike,
        served_model_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 300.0,
        stop_grace_s: float = 10.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.model_path = str(model)
        self.model = served_model_name or Path(model).name
        self.python = str(python)
        self.log_path = Path(log_path)
        self.host = host
        self.port = port or free_port(host)
        self.extra_args, key = _take_api_key(list(extra_args))
        self.env = dict(env or {})
        if key is not None:  # through the environment, not argv: argv shows in `ps` and in vLLM's own log
            self.env["VLLM_API_KEY"] = key
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.poll_interval_s = poll_interval_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (what clients take as base_url)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def command(self) -> list[str]:
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path, "--served-model-name", self.model,
            "--host", self.host, "--port", str(self.port), *self.extra_args,
            *([] if "--enable-prompt-tokens-details" in self.extra_args else ["--enable-prompt-tokens-details"]),
        ]  # prompt_tokens_details: how many prompt tokens the prefix cache served (run.json's cache hit rate)

    def start(self) -> Self:
        """Start the server and wait until /health answers 200."""
        if self.proc is not None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM: %s (log: %s)", " ".join(_redacted(self.command)), self.log_path)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as out:
            # Own session = own process group: stop() reaches vLLM's workers too.
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        log.info("vLLM healthy at %s after %.1f s", self.url, time.monotonic() - t0)
        return self

    def _wait_healthy(self, t0: float) -> None:
        health = f"http://{self.host}:{self.port}/health"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"vLLM server exited with code {code} during startup"))
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            if time.monotonic() - t0 > self.startup_timeout_s:
                raise ServerStartError(self._failure(f"vLLM server not healthy after {self.startup_timeout_s:.0f} s"))
            time.sleep(self.poll_interval_s)

    def _failure(self, what: str) -> str:
        return f"{what} (model {self.model_path}, log {self.log_path}); last log lines:\n{log_tail(self.log_path)}"

    def stop(self) -> None:
        """Terminate the whole process group: SIGTERM, then SIGKILL after the grace period."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning("vLLM server did not stop in %.0f s: killing it", self.stop_grace_s)
        # The leader may be gone while workers in its group linger: kill the rest, and return only once they are gone.
        self._signal(proc, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + max(self.stop_grace_s, 5.0)
        while group_members(proc.pid) and time.monotonic() < deadline:
            self._signal(proc, signal.SIGKILL)
            time.sleep(0.05)
        left = group_members(proc.pid)
        if left:
            log.warning("vLLM server processes %s outlived SIGKILL for %.0f s", left, max(self.stop_grace_s, 5.0))

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # pgid == pid: start_new_session=True
        except ProcessLookupError:
            pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
