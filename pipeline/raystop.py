"""Stop one Ray cluster's processes on this machine, found by the `--temp-dir` it was started with.

`ray stop` stops every Ray process on the machine, other users' clusters and embedded runs included. Here a process
is stopped only when it is Ray's own (a Ray binary, one of Ray's Python entry points, or a title Ray gives its
workers and helpers) and it belongs to the cluster:

- an argument names the temp dir (or the live session dir behind `session_latest`) as a whole path: the argument is
  that folder, a path under it, or `--flag=` either (never a substring in the middle of another path);
- it is the Ray client server of a node found so (the only thing it names is that node's id);
- it descends, through Ray processes only, from a process found so (workers and agents, whose titles Ray rewrites
  to `ray::...`), and names no other cluster's folders;
- it is a `ray::` worker left behind by a dead raylet, whose stdout is a log file inside the temp dir.

A process merely mentioning the path, a child a worker started for its own work, and the address recorded in
`ray_current_cluster` (it may be stale, and its port reused) never select anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import psutil

RAY_BINARIES = frozenset({"gcs_server", "raylet"})
RAY_SCRIPTS = ("ray/autoscaler/_private/monitor.py", "ray/_private/log_monitor.py", "ray/dashboard/dashboard.py",
               "ray/dashboard/agent.py", "ray/_private/runtime_env/agent/main.py",
               "ray/_private/workers/default_worker.py", "ray/_private/workers/setup_worker.py")  # fmt: skip
RAY_MODULES = frozenset({"ray.util.client.server"})
RAY_TITLES = ("ray::", "ray-dashboard-")
_MP_HELPER = re.compile(r"^from multiprocessing\.(forkserver|resource_tracker) import main")
_PYTHON = re.compile(r"^python[0-9.]*$")
_DIR_FLAGS = re.compile(r"^--(temp|session|log|logs)[-_]dir=")
_NODE_ID = re.compile(r"^--node[-_]id=([0-9a-f]{16,})$")


def _script(args: list[str]) -> tuple[str, str] | None:
    """("script", path) or ("module", name) of a Python command line; None for `-c` or no Python."""
    if not args or not _PYTHON.match(os.path.basename(args[0])):
        return None
    rest = iter(args[1:])
    for a in rest:
        if a == "-m":
            return "module", next(rest, "")
        if a == "-c" or a.startswith("-c"):
            return None
        if a in ("-W", "-X"):
            next(rest, None)
        elif not a.startswith("-"):
            return "script", a
    return None


def ray_kind(args: list[str]) -> str | None:
    """Why a command line is Ray's own ("binary", "script", "title", "cli"), or None when it is not."""
    if not args:
        return None
    if args[0].startswith(RAY_TITLES):
        return "title"
    if os.path.basename(args[0]) in RAY_BINARIES:
        return "binary"
    script = _script(args)
    if script is None:
        return None
    kind, name = script
    if kind == "module":
        return "script" if name in RAY_MODULES else None
    if any(name.endswith("/" + s) for s in RAY_SCRIPTS):
        return "script"
    after = args[args.index(name) + 1 :]
    if os.path.basename(name) == "ray" and after[:1] == ["start"]:  # `ray start --block` stays up with its cluster
        return "cli"
    return None


def names_dir(arg: str, dirs: set[str]) -> bool:
    """The argument is one of `dirs`, a path under one, or `--flag=` either: a whole path, never a substring."""
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    return any(value == d or value.startswith(d + "/") for d in dirs)


def _mp_helper(args: list[str]) -> bool:
    """Python's multiprocessing fork server or resource tracker (Ray's dashboard starts them for its modules)."""
    return bool(args) and _PYTHON.match(os.path.basename(args[0])) is not None and "-c" in args[1:3] and any(
        _MP_HELPER.match(a) for a in args[2:4])


def _arguments(args: list[str]) -> list[str]:
    """The arguments that may name the cluster's folders: not the executable, nor the Python script or module (a
    temp dir holding the Ray install must not select every cluster run from that install)."""
    script = _script(args)
    skip = {0} | ({args.index(script[1])} if script and script[1] in args else set())
    return [a for i, a in enumerate(args) if i not in skip]


def _names_other_dir(args: list[str], dirs: set[str]) -> bool:
    return any(_DIR_FLAGS.match(a) and not names_dir(a, dirs) for a in args)


def cluster_dirs(temp_dir: str | Path) -> set[str]:
    """The temp dir as given (absolute) and resolved, and its live session dir as `session_latest` names it (Ray
    writes the path it was given, which may be another way to the same folder); a link leading out is ignored."""
    given = os.path.abspath(str(temp_dir)).rstrip("/") or "/"
    dirs = {given, os.path.realpath(given)}
    latest = os.path.join(given, "session_latest")
    if os.path.islink(latest):
        session = os.path.normpath(os.path.join(given, os.readlink(latest)))
        real = os.path.realpath(session)
        if os.path.isdir(real) and os.path.dirname(real) == os.path.realpath(given) and os.path.basename(real).startswith("session_"):
            dirs |= {session, real}
    return {d for d in dirs if d != "/"}


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return [a for a in p.cmdline() if a]
    except psutil.Error:
        return []


def _logs_inside(p: psutil.Process, dirs: set[str]) -> bool:
    """Whether stdout or stderr is a file in the cluster's folders (a Ray worker's own log)."""
    for fd in (1, 2):
        try:
            if names_dir(os.readlink(f"/proc/{p.pid}/fd/{fd}"), dirs):
                return True
        except OSError:
            continue
    return False


def cluster_processes(temp_dir: str | Path) -> list[psutil.Process]:
    """The Ray processes of the cluster started with `temp_dir` (module docstring: which, and why)."""
    dirs = cluster_dirs(temp_dir)
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    procs = {p.pid: (p, _cmdline(p)) for p in psutil.process_iter() if p.pid not in mine}
    ray = {pid: (p, args) for pid, (p, args) in procs.items() if ray_kind(args)}
    found = {pid: p for pid, (p, args) in ray.items()
             if ray_kind(args) != "title" and any(names_dir(a, dirs) for a in _arguments(args))}
    nodes = {m.group(1) for pid in found for a in ray[pid][1] if (m := _NODE_ID.match(a))}
    for pid, (p, args) in ray.items():
        if _script(args) == ("module", "ray.util.client.server") and any(
            (m := _NODE_ID.match(a)) and m.group(1) in nodes for a in args
        ):
            found[pid] = p
    todo = list(found.values())
    while todo:
        parent = todo.pop()
        try:
            children = parent.children()
        except psutil.Error:
            continue
        for child in children:
            child, args = procs.get(child.pid, (child, _cmdline(child)))
            ours = (ray_kind(args) or _mp_helper(args)) and not _names_other_dir(args, dirs)
            if not ours or child.pid in found or child.pid in mine:
                continue
            found[child.pid] = child
            todo.append(child)
    for pid, (p, args) in ray.items():
        if pid not in found and args[0].startswith("ray::") and _logs_inside(p, dirs):
            found[pid] = p
    return sorted(found.values(), key=lambda p: p.pid)


def describe(p: psutil.Process, width: int = 100) -> str:
    """`PID command`, the command cut short (a raylet's line is kilobytes long) and Ray's paths from `ray/` on."""
    args = _cmdline(p)
    script = _script(args)
    if not args:
        short = "?"
    elif args[0].startswith(RAY_TITLES) or script is None:
        short = " ".join([args[0] if args[0].startswith(RAY_TITLES) else os.path.basename(args[0]), *args[1:]])
    else:
        kind, name = script
        shown = f"-m {name}" if kind == "module" else name[name.rfind("ray/"):] if "ray/" in name else name
        short = " ".join([os.path.basename(args[0]), shown, *args[args.index(name) + 1 :]])
    return f"{p.pid:>8} {short[:width]}"


def signal_all(procs: list[psutil.Process], kill: bool = False) -> None:
    """SIGTERM (or SIGKILL) each process; one already gone is no error."""
    for p in procs:
        try:
            p.kill() if kill else p.terminate()
        except psutil.Error:
            pass


def kill_now(procs: list[psutil.Process], timeout_s: float = 10.0) -> None:
    """SIGKILL every process and wait for it to be gone."""
    signal_all(procs, kill=True)
    psutil.wait_procs(procs, timeout=timeout_s)


def stop_cluster(temp_dir: str | Path, grace_s: float = 15.0, dry_run: bool = False,
                 say: Callable[[str], None] = print) -> int:
    """Say, then SIGTERM (SIGKILL after `grace_s`) the cluster's processes; a worker a raylet starts meanwhile is
    caught by the next round. Returns how many were (with `dry_run`: would be) stopped."""
    seen: set[int] = set()
    for _ in range(1 if dry_run else 3):
        procs = cluster_processes(temp_dir)
        if not procs:
            break
        for p in procs:
            if p.pid not in seen:
                say(describe(p))
        seen |= {p.pid for p in procs}
        if dry_run:
            break
        signal_all(procs)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        kill_now(alive)
    return len(seen)
