"""Every command block of the README runs, in order, as a new user would run it (see blocks.py for the stand-ins).

The local blocks run top to bottom in a scratch copy of the repository (so
`out/` is the copy's): `make demo`, a run, the Python reader, `--retry-rejects`,
a CLIP run and dedup, stats, LLaVA import/export, the four training commands,
the benchmarks. The cluster blocks run exactly as written inside a network
namespace (tests/chaos/cluster.py) against the head they start, and are
stopped with the README's own stop command; the console block's output must be
what the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from fixtures.s3server import make_bucket, s3_env, s3_server, upload_tree
from fixtures.videos import SynthVideo, make_video
from tests.chaos.cluster import NODE_IP, Namespace, namespaces_available
from tests.readme.blocks import ROOT, cpu_form, demo_output_block, demo_output_problems, readme_blocks

pytestmark = pytest.mark.slow
SKIP = (".git", ".venv", ".venv-vllm", ".venv-lmms", ".cache", "out", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info")


def test_every_runnable_block_has_a_runner():
    blocks = readme_blocks()
    assert {b.kind for b in blocks} <= {"local", "cluster", "console"}
    assert sum(b.kind == "cluster" for b in blocks) >= 2  # start + submit, and the stop
    assert all(b.commands for b in blocks), [b.line for b in blocks if not b.commands]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of the repository whose environments are this checkout's (installed once, as `make` leaves them)."""
    copy = tmp_path_factory.mktemp("readme") / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*SKIP), copy_function=shutil.copy2, symlinks=True)
    for env in (".venv", ".venv-vllm", ".cache"):
        if (ROOT / env).exists():
            (copy / env).symlink_to(ROOT / env)
    return copy


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """`/data/...` and `/shared/...`: two short videos and a LLaVA file over them; `{tiny_clip}`: a local CLIP."""
    import open_clip
    import torch

    from tests.filters.test_clip import TINY

    root = tmp_path_factory.mktemp("user")
    videos = root / "data" / "videos"
    videos.mkdir(parents=True)
    for i in range(2):
        make_video(SynthVideo(f"clip{i}", duration_s=20 + 4 * i, width=160, height=90, fps=10, audio=False), videos)
    records = [{"id": f"clip{i}", "video": f"clip{i}.mp4",
                "conversations": [{"from": "human", "value": "<image>\nHow long is the video?"},
                                  {"from": "gpt", "value": f"About {20 + 4 * i} seconds."}]} for i in range(2)]  # fmt: skip
    (root / "data" / "annotations.json").write_text(json.dumps(records))
    (root / "shared").mkdir()
    shutil.copytree(videos, root / "shared" / "videos")
    clip = root / "clip"
    clip.mkdir()
    (clip / "tiny-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(clip / "tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), clip / "tiny-clip.pt")
    tiny_clip = (f"--set filters.clip.arch=tiny-clip --set filters.clip.arch_config={clip / 'tiny-clip.json'} "
                 f"--set filters.clip.weights={clip / 'tiny-clip.pt'}")  # fmt: skip
    return {"/data/": f"{root}/data/", "/shared/": f"{root}/shared/", "{tiny_clip}": tiny_clip}


def user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
    return env


def run_line(command: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    script = cwd / ".readme-line.sh"
    script.write_text("set -eo pipefail\n" + command + "\n")
    return subprocess.run(["bash", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(7200)  # the whole first hour in one test: ~10 min here, 48 min beside two CPU hogs
def test_local_blocks_run_as_written(scratch, stand_ins, tmp_path):
    env = user_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    ran = []
    for block in readme_blocks():
        if block.kind != "local":
            continue
        for command in block.commands:
            line = cpu_form(command, stand_ins)
            if block.lang == "python":
                line = f"{sys.executable} - <<'EOF'\n{cpu_form(block.text, stand_ins)}\nEOF"
            done = run_line(line, scratch, env)
            assert done.returncode == 0, f"README line {block.line}: {line}\n{(done.stdout + done.stderr)[-3000:]}"
            if line.startswith("make ") and line.endswith(" demo"):  # what the README says the demo prints, it prints
                assert demo_output_problems(demo_output_block(), done.stdout) == [], done.stdout[-4000:]
            ran.append(line)
            if block.lang == "python":
                break
    assert any(r.startswith("make ") and r.endswith(" demo") for r in ran) and any("prolongvid train" in r for r in ran)
    assert (scratch / "out" / "demo" / "index.parquet").exists() and (scratch / "out" / "train" / "stage3_192f").exists()


def test_console_block_prints_what_the_readme_shows(scratch, stand_ins, tmp_path):
    env = user_env(tmp_path)
    for block in readme_blocks():
        if block.kind != "console":
            continue
        expected: dict[str, list[str]] = {}
        command = None
        for line in block.text.splitlines():
            if line.startswith("$ "):
                command = line[2:]
                expected[command] = []
            elif command is not None:
                expected[command].append(line)
        for command, lines in expected.items():
            done = run_line(cpu_form(command, stand_ins), scratch, env, timeout=120)
            shown = "\n".join(cpu_form(x, stand_ins) for x in lines)
            assert done.returncode == 2 and (done.stdout + done.stderr).strip() == shown, (command, done.stderr)


@pytest.mark.skipif(namespaces_available() is not None, reason=str(namespaces_available()))
def test_cluster_blocks_run_as_written(scratch, stand_ins):
    """Start, token, submit and stop exactly as the README says, in a namespace whose traffic stays on this machine."""
    from shards.access import reading_run
    from shards.reader import read_index
    from shards.verify import verify_run

    temp = tempfile.mkdtemp(prefix="rayr", dir="/tmp")  # short: Ray's socket paths; stands in for /tmp/ray-prolongvid
    home = Path(tempfile.mkdtemp(prefix="home", dir="/tmp"))
    ins = {**stand_ins, "HEAD:": f"{NODE_IP}:", "/tmp/ray-prolongvid": temp}
    env = user_env(home)
    env["PATH"] = os.environ["PATH"]  # the README's `source .venv/bin/activate` puts the venv first
    ns = Namespace()
    saved = dict(os.environ)
    stack = ExitStack()
    try:
        # The buckets the block names, on a real S3 API server this machine serves to the namespace: the nodes get
        # its endpoint and keys in the environment of `ray start`, as the README tells a user to.
        endpoint = stack.enter_context(s3_server(Path(home), host=ns.link_host()))
        env.update({k: v for k, v in s3_env(endpoint).items() if k != "HOME"})
        os.environ.update(s3_env(endpoint))
        for bucket in ("videos", "runs"):
            make_bucket(endpoint, bucket)
        upload_tree(Path(stand_ins["/shared/"]) / "videos", "s3://videos/raw")
        cluster = [b for b in readme_blocks() if b.kind == "cluster"]
        start = "\n".join(cpu_form(c, ins) for c in cluster[0].commands)
        stop = "\n".join(cpu_form(c, ins) for b in cluster[1:] for c in b.commands)
        members = f"PYTHONPATH={ROOT} {sys.executable} -c \"from tests.chaos.cluster import listing; listing('{temp}')\""
        script = scratch / ".readme-cluster.sh"  # one shell session, as a user types it
        script.write_text(f"set -eo pipefail\n{start}\n{members}\necho '--- stop'\n{stop}\n")
        done = subprocess.run(ns.cmd(["bash", str(script)], cwd=scratch), env=env, capture_output=True, text=True, timeout=900)
        log = done.stdout + done.stderr
        assert done.returncode == 0 and "succeeded" in log and "--- stop" in log, log[-4000:]
        assert "verify: OK" in log
        with reading_run("s3://runs/run1") as (run, tars):
            assert len(read_index(run)) == 2 and verify_run(run, tars) == []
        assert (home / ".ray" / "auth_token").stat().st_size >= 32  # token auth was on: the job ran with the token
        assert "raylet" in log.split("--- stop")[0]  # the cluster was up until the stop
        assert ns.members() == [], [(p.cmdline(), p.ppid(), psutil.Process(p.ppid()).cmdline()[:3]) for p in ns.members()]  # the README's stop left nothing behind
    finally:
        ns.close()
        stack.close()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
