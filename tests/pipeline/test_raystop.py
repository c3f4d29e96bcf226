"""`prolongvid ray-stop D` stops the Ray processes of the cluster started with `--temp-dir D`, and nothing else: not a
process that merely mentions D (whole, as `--flag=D`, or inside a longer path), nor one at a stale recorded address."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from pipeline.raystop import cluster_processes, kill_now, names_dir, ray_kind

ROOT = Path(__file__).resolve().parents[2]
SLEEP = "import sys, time; time.sleep(600)"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def temp_dir():
    """A short folder (Ray's socket paths have a length limit), removed with anything still naming it."""
    d = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    yield d
    left = []
    for p in psutil.process_iter():
        try:
            if any(str(d) in a for a in p.cmdline()):
                left.append(p)
        except psutil.Error:
            continue
    kill_now(left)
    shutil.rmtree(d, ignore_errors=True)


def fake_log_monitor(tmp_path: Path) -> Path:
    """A script at the path of Ray's log monitor: to the command line it is one (it starts a plain child)."""
    path = tmp_path / "site-packages" / "ray" / "_private" / "log_monitor.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("import subprocess, time\nsubprocess.Popen(['sleep', '600'])\nprint('up', flush=True)\ntime.sleep(600)\n")
    return path


def decoys(d: Path, tmp_path: Path) -> list[subprocess.Popen]:
    """Plain processes naming D in every way but as a Ray process of D (and one that looks like Ray's log monitor but
    names D only inside another path); one has a child of its own."""
    stale = f"127.0.0.1:{free_port()}"  # no GCS listens there
    (d / "ray_current_cluster").write_text(stale + "\n")
    fake_ray = fake_log_monitor(tmp_path)
    py = sys.executable
    argvs = [
        ([f"{d}/job.sh", "600"], "/bin/sleep"),  # D/ in an argument (here the first)
        ([py, "-c", SLEEP, f"--out={d}"], None),  # =D
        ([py, "-c", SLEEP, str(d)], None),  # bare D
        ([py, "-c", SLEEP, f"/home{d}/x", f"/var{d}/session_latest"], None),  # D/ inside a longer path
        ([py, "-c", SLEEP, f"{d}x/logs"], None),  # a sibling folder sharing D's prefix
        ([py, "-c", SLEEP, f"--address={stale}", f"--gcs-address={stale}"], None),  # the stale recorded address
    ]
    procs = [subprocess.Popen(argv, executable=exe) for argv, exe in argvs]
    parent = subprocess.Popen([py, "-c", f"import subprocess; subprocess.Popen(['sleep', '600']); print('up', flush=True); "
                               f"{SLEEP}", f"{d}/child"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    ray_like = subprocess.Popen([py, "-u", str(fake_ray), f"--session-dir=/home{d}/session_latest"], stdout=subprocess.PIPE,
                                text=True)  # Ray's by its command line, naming D only inside another path
    installed = subprocess.Popen([py, "-u", str(fake_log_monitor(d / "venv")), f"--session-dir={tmp_path}/other/session_1"],
                                 stdout=subprocess.PIPE, text=True)  # a Ray installed inside D, of another cluster
    assert parent.stdout.readline() == "up\n" and ray_like.stdout.readline() == "up\n"  # their children are running
    assert installed.stdout.readline() == "up\n"
    return [*procs, parent, ray_like, installed]


def alive(p: subprocess.Popen | psutil.Process | int) -> bool:
    try:
        proc = p if isinstance(p, psutil.Process) else psutil.Process(p if isinstance(p, int) else p.pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    found = []
    for p in procs:
        try:
            found += psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            continue
    return found


def stop_decoys(procs: list[subprocess.Popen]) -> None:
    kids = descendants(procs)
    for p in procs:
        p.kill()
        p.wait(30)
        if p.stdout:
            p.stdout.close()
    kill_now(kids)


def test_whole_path_components_only():
    d = {"/tmp/rs-ab"}
    assert names_dir("/tmp/rs-ab", d) and names_dir("/tmp/rs-ab/session_x/logs", d)
    assert names_dir("--temp-dir=/tmp/rs-ab", d) and names_dir("--log_dir=/tmp/rs-ab/s/logs", d)
    assert not names_dir("/home/tmp/rs-ab/x", d) and not names_dir("/tmp/rs-abc", d)
    assert not names_dir("--x=/var/tmp/rs-ab", d) and not names_dir("x/tmp/rs-ab", d)
    assert ray_kind(["ray::IDLE"]) == "title" and ray_kind(["/v/ray/core/src/ray/raylet/raylet", "--x"]) == "binary"
    assert ray_kind(["/v/bin/python", "-m", "ray.util.client.server", "--address=a:1"]) == "script"
    assert ray_kind(["/v/bin/python", "-u", "/v/site-packages/ray/_private/log_monitor.py"]) == "script"
    assert ray_kind(["/v/bin/python", "-c", "import ray", "/v/site-packages/ray/_private/log_monitor.py"]) is None
    assert ray_kind(["sleep", "600"]) is None and ray_kind(["/tmp/rs-ab/raylet.sh"]) is None


def test_processes_that_only_mention_the_temp_dir_are_not_stopped(temp_dir, tmp_path):
    procs = decoys(temp_dir, tmp_path)
    try:
        kids = descendants(procs)
        assert len(kids) == 3
        assert cluster_processes(temp_dir) == []
        done = cli("ray-stop", str(temp_dir), "--grace-s", "1")
        assert done.returncode == 0, done.stderr
        assert f"stopped 0 Ray processes of {temp_dir}" in done.stdout
        assert [p.args for p in procs if not alive(p)] == [] and all(alive(k) for k in kids)
    finally:
        stop_decoys(procs)


def test_a_ray_process_of_the_live_session_named_through_another_path_is_stopped_not_its_plain_child(temp_dir, tmp_path):
    other = Path(tempfile.mkdtemp(prefix="rsl-", dir="/tmp"))
    link = other / "t"
    link.symlink_to(temp_dir)  # `ray start --temp-dir <link>`: Ray names the folder the way it was given
    (temp_dir / "session_1").mkdir()
    (temp_dir / "session_latest").symlink_to(link / "session_1")
    proc = subprocess.Popen([sys.executable, "-u", str(fake_log_monitor(tmp_path)), f"--session-dir={link}/session_1"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    kids: list[psutil.Process] = []
    try:
        assert proc.stdout.readline() == "up\n"
        kids = descendants([proc])
        assert [p.pid for p in cluster_processes(temp_dir)] == [proc.pid] and len(kids) == 1
        done = cli("ray-stop", str(temp_dir), "--grace-s", "5")
        assert done.returncode == 0 and f"{proc.pid:>8} python ray/_private/log_monitor.py" in done.stdout, done.stdout
        assert proc.wait(30) != 0 and alive(kids[0])  # the Ray process is gone, the child it started for its work is not
    finally:
        kids += descendants([proc])
        stop_decoys([proc])
        kill_now(kids)
        shutil.rmtree(other)


def cluster_members(d: Path, port: int, skip: set[int]) -> dict[int, psutil.Process]:
    """Every process naming D anywhere or the GCS port, and all their descendants (a wide net, for the check)."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        try:
            args = p.cmdline()
            if p.pid not in skip and any(str(d) in a or a.endswith(f":{port}") for a in args):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True) if c.pid not in skip})
        except psutil.Error:
            continue
    return found


def test_a_real_head_is_stopped_whole_and_dry_run_stops_nothing(temp_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    port = free_port()
    procs = decoys(temp_dir, tmp_path)
    skip = {os.getpid()} | {p.pid for p in procs} | {k.pid for k in descendants(procs)}
    try:
        start = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--temp-dir", str(temp_dir), "--port", str(port),
             "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats",
             "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port())],
            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert start.returncode == 0, start.stderr[-3000:]
        ray = cluster_processes(temp_dir)
        names = {p.name() for p in ray}
        assert {"gcs_server", "raylet"} <= names and not {p.pid for p in ray} & skip, names

        dry = cli("ray-stop", str(temp_dir), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        listed = {int(line.split()[0]) for line in dry.stdout.splitlines() if line.strip()[:1].isdigit()}
        assert {p.pid for p in ray} <= listed and not listed & skip, dry.stdout
        assert all(alive(p) for p in ray) and f"would stop {len(listed)} Ray processes" in dry.stdout

        members = cluster_members(temp_dir, port, skip)
        assert {p.pid for p in ray} <= set(members)
        done = cli("ray-stop", str(temp_dir), "--grace-s", "5")
        assert done.returncode == 0, done.stderr
        assert [p.cmdline()[:2] for p in members.values() if alive(p)] == [], done.stdout  # nothing of the head left
        assert cluster_processes(temp_dir) == [] and cluster_members(temp_dir, port, skip) == {}
        assert [p.args for p in procs if not alive(p)] == []  # the decoys beside a live cluster are untouched
        assert all(alive(pid) for pid in skip - {os.getpid(), *(p.pid for p in procs)})
    finally:
        stop_decoys(procs)
        kill_now(list(cluster_members(temp_dir, port, skip).values()))
