"""The embedded Ray of a local run listens on loopback only and lets in only whoever holds the run's own token.

Left to its defaults on Linux, `ray.init` puts the node on the machine's interface address: gcs_server, raylet
and every worker listen on `*`, the agents on the interface address, the metrics ports on 0.0.0.0; the token
comes from ~/.ray/auth_token (written into the user's home when missing), and there is none at all when the
user's shell says RAY_AUTH_MODE=disabled (meant for their own cluster). Each test here starts real Ray
processes and looks at their sockets from outside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import psutil
import pytest

from pipeline.raystop import cluster_processes, kill_now

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
USER_TOKEN = b"f" * 64  # the user's own token for their own cluster: must not open the run's

# Starts the run's embedded Ray through init_ray, runs one task (a worker listens too), says where its GCS is
# and what RAY_AUTH_* the driver's environment holds afterwards, and keeps Ray up until told on stdin.
HOLD = """
import json, os, sys
import ray
from pipeline.run_config import load_run_config
from pipeline.run import init_ray

init_ray(load_run_config(sys.argv[1], ["llm.enabled=false", "ray.num_cpus=1", "ray.temp_dir=" + sys.argv[2]]))


@ray.remote
def pid():
    return os.getpid()


ray.get(pid.remote())
auth = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "auth": auth}), flush=True)
sys.stdin.readline()
ray.shutdown()
"""

# A second process joining the cluster (Ray's own client: `ray.init(address=...)`, or init_ray with ray.address).
JOIN = """
import os, sys
import ray
if sys.argv[2] == "init_ray":
    from pipeline.run_config import load_run_config
    from pipeline.run import init_ray
    init_ray(load_run_config(sys.argv[3], ["llm.enabled=false", "ray.address=" + sys.argv[1]]))
else:
    ray.init(address=sys.argv[1])
print("CONNECTED", ray.cluster_resources().get("CPU"), sorted(k for k in os.environ if k.startswith("RAY_AUTH")))
ray.shutdown()
"""


def loopback(host: str) -> bool:
    addr = ip_address(host)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def listeners(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of each listening TCP socket of `root` and its descendants."""
    found = set()
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for p in procs:
        try:
            name, conns = p.name(), p.net_connections("inet")
        except psutil.Error:
            continue  # gone meanwhile
        found |= {(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def run_token(root: psutil.Process) -> str | None:
    """RAY_AUTH_TOKEN in the environment of the raylet under `root` (None: no raylet yet, or no token)."""
    try:
        procs = root.children(recursive=True)
    except psutil.Error:
        return None
    for p in procs:
        try:
            if p.name() == "raylet":
                return p.environ().get("RAY_AUTH_TOKEN")
        except psutil.Error:
            continue
    return None


def user_env(home: Path, **auth: str) -> dict[str, str]:
    """This environment without Ray settings, HOME a fresh folder, plus `auth`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), **auth)
    return env


def files_holding(text: str, *dirs: Path) -> list[Path]:
    needle = text.encode()
    return [f for d in dirs for f in d.rglob("*") if f.is_file() and not f.is_symlink() and needle in f.read_bytes()]


def no_leftovers(temp: str) -> None:
    """Every process of the cluster started with `temp` ends (Ray's shutdown stops them; a straggler is waited for)."""
    _, alive = psutil.wait_procs(cluster_processes(temp), timeout=60)
    assert alive == [], [p.pid for p in alive]


@dataclass
class Embedded:
    proc: subprocess.Popen
    gcs: str
    auth: dict[str, str]  # RAY_AUTH_* of the driver's environment once init_ray returned
    token: str | None  # the one the raylet runs with
    home: Path
    temp: str
    user_token_file: Path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A run's embedded Ray, started by init_ray in a driver whose user set RAY_AUTH_MODE=disabled and their own
    token file (for their cluster); kept up for the module's tests, then shut down by the driver itself."""
    base = tmp_path_factory.mktemp("embedded")
    home = base / "home"
    home.mkdir()
    user_token_file = base / "user_token"
    user_token_file.write_bytes(USER_TOKEN)
    temp = tempfile.mkdtemp(prefix="rbind", dir="/tmp")  # short: Ray's socket paths
    env = user_env(home, RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN_PATH=str(user_token_file))
    with open(base / "driver.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(DEMO), temp], cwd=ROOT, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    try:
        line = proc.stdout.readline()
        assert line, (base / "driver.log").read_text()[-3000:]
        said = json.loads(line)
        token = run_token(psutil.Process(proc.pid))
        yield Embedded(proc, said["gcs"], said["auth"], token, home, temp, user_token_file)
        proc.stdin.write("\n")
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0, (base / "driver.log").read_text()[-3000:]
        no_leftovers(temp)
    finally:
        if proc.poll() is None:
            kill_now([psutil.Process(proc.pid)])
        kill_now(cluster_processes(temp))
        shutil.rmtree(temp, ignore_errors=True)


def join(embedded: Embedded, how: str, **auth: str) -> subprocess.Popen:
    """A process joining the cluster; its output comes back through `communicate`."""
    # Ray's client turns a loopback address into the interface address unless told the cluster is one machine's.
    env = user_env(embedded.home, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **auth)
    return subprocess.Popen([sys.executable, "-c", JOIN, embedded.gcs, how, str(DEMO)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_embedded_ray_listens_on_loopback_only(embedded):
    found = listeners(psutil.Process(embedded.proc.pid))
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in found}, found
    assert [x for x in found if not loopback(x[1])] == []
    assert loopback(embedded.gcs.rpartition(":")[0])


def test_embedded_ray_refuses_whoever_lacks_the_run_token(embedded):
    """A wrong token, the user's own token, no token (auth off) and Ray's defaults are all turned away by the GCS."""
    tries = {
        "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
        "the user's token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(embedded.user_token_file)},
        "auth disabled": {"RAY_AUTH_MODE": "disabled"},
        "defaults": {},
    }
    clients = {what: join(embedded, "ray.init", **auth) for what, auth in tries.items()}  # side by side: each retries
    for what, client in clients.items():
        out, _ = client.communicate(timeout=300)
        assert client.returncode != 0 and "CONNECTED" not in out, (what, out[-2000:])
        assert "InvalidAuthToken" in out, (what, out[-2000:])  # turned away for the token, not for want of a route
    assert embedded.user_token_file.read_bytes() == USER_TOKEN


def test_the_run_token_lets_a_driver_in_through_ray_address(embedded):
    """With the cluster's token in the user's RAY_AUTH_* (ray.address: the user's settings, untouched) it joins."""
    assert embedded.token and len(embedded.token) >= 32
    client = join(embedded, "init_ray", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=embedded.token)
    out, _ = client.communicate(timeout=300)
    assert client.returncode == 0 and "CONNECTED 1.0 ['RAY_AUTH_MODE', 'RAY_AUTH_TOKEN']" in out, out[-2000:]


def test_the_run_token_is_in_no_file_and_the_user_settings_come_back(embedded):
    assert embedded.token
    assert embedded.auth == {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(embedded.user_token_file)}
    assert not (embedded.home / ".ray").exists()  # no ~/.ray/auth_token made
    assert embedded.user_token_file.read_bytes() == USER_TOKEN
    assert files_holding(embedded.token, Path(embedded.temp), embedded.home, embedded.user_token_file.parent) == []


def test_a_real_run_keeps_its_ray_on_loopback(tmp_path, video):
    """`prolongvid run` on one video: while it runs, every socket its processes listen on is loopback; its Ray
    runs with a token of its own that no file (run folder, Ray's logs, home) holds; it leaves no Ray behind."""
    inputs, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    inputs.mkdir()
    home.mkdir()
    (inputs / "clip.mp4").write_bytes(video("h264_10s").read_bytes())
    temp = tempfile.mkdtemp(prefix="rbind", dir="/tmp")
    sets = ["llm.enabled=false", f"input.path={inputs}", "input.format=auto", f"output.dir={out}",
            f"ray.temp_dir={temp}", "shards.eval_fraction=0"]
    cmd = [sys.executable, "-m", "pipeline", "run", str(DEMO), *(x for s in sets for x in ("--set", s))]
    found: set[tuple[str, str, int]] = set()
    token = None
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=user_env(home), stdout=log, stderr=subprocess.STDOUT)
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:  # look while it runs; the run's end ends the loop
            found |= listeners(root)
            token = token or run_token(root)
            time.sleep(0.2)
        shown = (tmp_path / "run.log").read_text()
        assert proc.returncode == 0, shown[-3000:]
        no_leftovers(temp)
        leaked = files_holding(token, out, Path(temp), home) if token else []
    finally:
        if proc.poll() is None:
            kill_now([psutil.Process(proc.pid)])
        kill_now(cluster_processes(temp))
        shutil.rmtree(temp, ignore_errors=True)
    assert json.loads((out / "run.json").read_text())["this_run"]["accepted"] == 1, shown[-3000:]
    assert "gcs_server" in {name for name, _, _ in found}, found
    assert [x for x in found if not loopback(x[1])] == []
    assert token, "the run's Ray ran without a token of its own"
    assert not (home / ".ray").exists()
    assert leaked == []
