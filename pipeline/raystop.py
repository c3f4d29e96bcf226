"""Stop one Ray cluster's processes on this machine, found by the `--temp-dir` it was started with.

`ray stop` stops every Ray process on the machine, other users' clusters
and embedded runs included. A cluster started with its own `--temp-dir`
names it in the command line of its GCS, raylets and monitors; their
descendants (agents, workers, whose titles Ray rewrites) are collected
before anything is signalled, then all get SIGTERM, and what is still alive
after the grace period gets SIGKILL.
"""

from __future__ import annotations

from pathlib import Path

import psutil


def _gcs_address(temp_dir: Path) -> str | None:
    """The cluster's GCS address, which `ray start` records in the temp dir."""
    try:
        return (temp_dir / "ray_current_cluster").read_text().strip() or None
    except OSError:
        return None


def cluster_processes(temp_dir: str | Path) -> list[psutil.Process]:
    """Processes whose command line names `temp_dir` (or a path under it) or the cluster's GCS address (the Ray
    client server names only that), and all their descendants."""
    mark = str(Path(temp_dir).resolve()).rstrip("/")
    gcs = _gcs_address(Path(mark))
    by_address = {f"--address={gcs}", f"--gcs-address={gcs}", f"--gcs_address={gcs}"} if gcs else set()
    me = psutil.Process().pid
    roots: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            args = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if p.pid != me and any(a == mark or mark + "/" in a or a.endswith("=" + mark) or a in by_address for a in args):
            roots[p.pid] = p
    found = dict(roots)
    for p in roots.values():
        try:
            for child in p.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    found.pop(me, None)
    return list(found.values())


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


def stop_cluster(temp_dir: str | Path, grace_s: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after `grace_s`, every process of the cluster; returns how many there were."""
    procs = cluster_processes(temp_dir)
    signal_all(procs)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    kill_now(alive)
    return len(procs)
