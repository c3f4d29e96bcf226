"""A three-node Ray cluster on this machine whose traffic cannot leave it.

Ray binds to the machine's interface address even when told 127.0.0.1, so
the cluster lives in a network namespace of its own: a loopback and a veth
pair whose both ends stay inside (10.77.0.1, the default route). Nothing in
the namespace has a link to the outside, so no packet can leave the machine.
The namespace is also a mount namespace: a small tmpfs mounted there (the
"disk" that fills up) is seen by the cluster and by nobody else. The holder
is a sleeping process; every process whose network namespace is its own is
killed by process id on close (never `ray stop`, which would stop every Ray
on the machine).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from pipeline.raystop import kill_now

NODE_IP = "10.77.0.1"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
ROOT = Path(__file__).resolve().parents[2]


def namespaces_available() -> str | None:
    """None when this process can make network and mount namespaces, else why not."""
    if os.geteuid() != 0:
        return "needs root for network and mount namespaces"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (util-linux / iproute2)"
    return None


class Namespace:
    """Network + mount namespace held by a sleeping process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "--", "sleep", "infinity"])
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == own:
            if time.monotonic() > deadline:
                raise RuntimeError("unshare did not enter a new network namespace")
            time.sleep(0.02)
        self.net = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        for cmd in ("ip link set lo up", "ip link add pv0 type veth peer name pv1", f"ip addr add {NODE_IP}/24 dev pv0",
                    "ip link set pv0 up", "ip link set pv1 up", "ip route add default dev pv0"):  # fmt: skip
            subprocess.run(self.cmd(cmd.split()), check=True, capture_output=True, timeout=30)

    def cmd(self, argv: list[str], cwd: Path | str | None = None, pid: int | None = None) -> list[str]:
        """`argv` run inside the namespace (nsenter would otherwise start it in `/`); with `pid`, inside that
        member's mount namespace (a node with a disk of its own)."""
        return ["nsenter", "-t", str(pid or self.holder.pid), "-n", "-m", f"--wd={cwd or os.getcwd()}", "--", *argv]

    def link_host(self) -> str:
        """A second veth pair, this machine's end outside and the other inside, in a /24 of 10.78.0.0/16 of this
        namespace's own (a namespace of an earlier test may not be gone yet): servers a test runs outside the
        namespace (an object store) are reachable from the cluster at the returned address, and nothing else is
        (the default route stays inside). It goes away with the namespace."""
        net = f"10.78.{self.holder.pid % 250 + 1}"
        host_ip, inside_ip = f"{net}.1", f"{net}.2"
        outside, inside = f"pvh{self.holder.pid % 100000}", f"pvi{self.holder.pid % 100000}"
        subprocess.run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside], check=True, timeout=30)
        for cmd in (f"ip link set {inside} netns {self.holder.pid}", f"ip addr add {host_ip}/24 dev {outside}",
                    f"ip link set {outside} up"):  # fmt: skip
            subprocess.run(cmd.split(), check=True, capture_output=True, timeout=30)
        for cmd in (f"ip addr add {inside_ip}/24 dev {inside}", f"ip link set {inside} up"):
            subprocess.run(self.cmd(cmd.split()), check=True, capture_output=True, timeout=30)
        return host_ip

    def path(self, inside: Path) -> Path:
        """Where a path of the namespace (a tmpfs mounted there, say) is seen from outside it."""
        return Path(f"/proc/{self.holder.pid}/root") / Path(inside).relative_to("/")

    def members(self) -> list[psutil.Process]:
        """Every process in the namespace but the holder."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != self.holder.pid and os.readlink(f"/proc/{p.pid}/ns/net") == self.net:
                    found.append(p)
            except (OSError, psutil.Error):
                continue
        return found

    def close(self) -> None:
        for _ in range(3):  # processes started while we kill (a raylet restarting a worker) are caught next round
            kill_now(self.members())
        self.holder.kill()
        self.holder.wait(10)


class Cluster:
    """`ray start --head` (no CPUs: tasks run on the workers) and worker nodes, each with its own temp dir.

    With `own_disks`, each node is also a machine with a disk of its own and no shared filesystem: it runs in a
    mount namespace of its own where `/` is read-only and its folder (`root/<node>`: Ray's temp dir, `TMPDIR`,
    `HOME`) is a tmpfs no other node sees. Whatever a job writes outside that folder fails, so a job that
    succeeds there wrote nothing else; its code comes from `ray job submit --working-dir`, not a shared path."""

    def __init__(self, ns: Namespace, root: Path, workers: int = 2, cpus_per_worker: int = 2,
                 own_disks: bool = False, node_env: dict[str, str] | None = None) -> None:
        self.ns, self.root, self.own_disks = ns, root, own_disks
        bin_dir = Path(sys.executable).parent
        (root / "home").mkdir(parents=True, exist_ok=True)
        # No RAY_* from this test session's embedded Ray (it turns token auth on), and the project's venv first on
        # the PATH: a job's `python` is the one on the PATH of `ray start`.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(HOME=str(root / "home"), PATH=f"{bin_dir}:{os.environ['PATH']}", **(node_env or {}))
        if not own_disks:
            self.env["PYTHONPATH"] = str(ROOT)
        self.ray = str(bin_dir / "ray")
        self.address = f"http://{NODE_IP}:{DASHBOARD_PORT}"
        self.cpus_per_worker = cpus_per_worker
        self._start("h", ["--head", f"--port={GCS_PORT}", "--num-cpus=0", "--dashboard-host=0.0.0.0",
                          f"--dashboard-port={DASHBOARD_PORT}"])  # fmt: skip
        self.workers = [f"w{i}" for i in range(1, workers + 1)]
        for name in self.workers:
            self.start_worker(name)
        self.wait_nodes(1 + workers)

    def _start(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        cmd = [self.ray, "start", *args, f"--temp-dir={temp}", "--object-store-memory=120000000", "--disable-usage-stats"]
        if self.own_disks:
            temp.mkdir(exist_ok=True)
            disk = (f"mount -t tmpfs -o size=2g tmpfs {temp} && mkdir {temp}/tmp {temp}/home && "
                    f"mount -o remount,bind,ro / && exec env HOME={temp}/home TMPDIR={temp}/tmp ")
            cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", disk + shlex.join(cmd)]
        done = subprocess.run(self.ns.cmd(cmd), env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ray start {name} failed: {done.stderr[-3000:]}")

    def start_worker(self, name: str) -> None:
        self._start(name, [f"--address={NODE_IP}:{GCS_PORT}", f"--num-cpus={self.cpus_per_worker}"])

    def alive_nodes(self) -> int:
        code = "import ray; ray.init(address='auto', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        env, head = {**self.env, "RAY_ADDRESS": f"{NODE_IP}:{GCS_PORT}"}, None
        if self.own_disks:  # a driver needs its node's disk: it runs in the head's mount namespace
            head = self.raylet("h").pid
            env.update(HOME=str(self.root / "h" / "home"), TMPDIR=str(self.root / "h" / "tmp"))
        done = subprocess.run(self.ns.cmd([sys.executable, "-c", code], cwd="/", pid=head), env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else -1

    def wait_nodes(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while (alive := self.alive_nodes()) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{alive} Ray nodes alive, expected {n}")
            time.sleep(1)

    def node_processes(self, name: str) -> list[psutil.Process]:
        """The node's raylet and everything it started (workers, agents)."""
        mark = str(self.root / name) + "/"
        procs = []
        for p in self.ns.members():
            try:
                if any(mark in part or part.endswith(mark[:-1]) for part in p.cmdline()):
                    procs.append(p)
            except psutil.Error:
                continue
        return procs

    def raylet(self, name: str) -> psutil.Process:
        return next(p for p in self.node_processes(name) if p.name() == "raylet")

    def node_of(self, pid: int) -> str | None:
        """The worker node a process belongs to (its raylet is an ancestor)."""
        try:
            chain = [psutil.Process(pid), *psutil.Process(pid).parents()]
        except psutil.Error:
            return None
        for name in self.workers:
            try:
                raylet = self.raylet(name).pid
            except (StopIteration, psutil.Error):
                continue
            if any(p.pid == raylet for p in chain):
                return name
        return None

    def kill_raylet(self, name: str) -> None:
        """A node lost as a kernel OOM or a dead machine loses it: its raylet gone at once, without a goodbye."""
        os.kill(self.raylet(name).pid, signal.SIGKILL)

    def kill_node(self, name: str) -> None:
        kill_now(self.node_processes(name), timeout_s=30)

    def submit(self, entrypoint: list[str], wait: bool = True) -> subprocess.Popen:
        """`ray job submit` of the project (its folder as the working dir); the client tails the job until it ends."""
        cmd = [self.ray, "job", "submit", "--address", self.address, "--working-dir", str(ROOT), "--", *entrypoint]
        proc = subprocess.Popen(self.ns.cmd(cmd), env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
        if wait:
            proc.communicate(timeout=600)
        return proc

    def drivers(self, out: Path) -> list[psutil.Process]:
        """The job's driver process(es) for a run writing to `out`."""
        found = []
        for p in self.ns.members():
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if "pipeline" in cmd and "run" in cmd and f"output.dir={out}" in cmd:
                found.append(p)
        return found


def listing(temp_dir: str) -> None:
    """Print the Ray processes of a cluster (by its temp dir): the README test's view before it stops them."""
    from pipeline.raystop import cluster_processes

    for p in cluster_processes(temp_dir):
        try:
            print(p.pid, p.name())
        except psutil.Error:
            continue
