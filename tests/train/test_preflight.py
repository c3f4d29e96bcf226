"""`prolongvid train` on data it cannot train on: exit 2, one line that says what to do, nothing written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run import run_pipeline
from tests.conftest import pipeline_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_without_llm(tmp_path_factory, video, ray_local) -> Path:
    """What configs/default.yaml makes: samples, and no conversations (the LLM is off)."""
    root = tmp_path_factory.mktemp("nollm")
    (root / "v").mkdir()
    for name in ("h264_10s", "hevc_10s"):
        shutil.copy(video(name), root / "v" / f"{name}.mp4")
    out = root / "out"
    summary = run_pipeline(pipeline_config(root / "v", out, "sampling.sets.0.num_frames=8", "sampling.sets.0.resize.size=64",
                                           "filters.visual.enabled=false", "shards.max_samples=1"))  # fmt: skip
    assert summary.samples_total == 2
    return out


def train_cli(tmp_path: Path, *sets: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "train_out"
    cmd = [sys.executable, "-m", "pipeline", "train", str(ROOT / "configs/train/tiny_debug.yaml"), "--set", f"output.dir={out}"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300), out


@pytest.mark.parametrize(
    "shards, expected",
    [
        ("{run}", "data.shards: 2 samples, 0 conversations in {run}: rerun the pipeline with the LLM on (llm.enabled=true) "
                  "or import LLaVA annotations (prolongvid import-llava)"),
        ("{tmp}/nowhere", "data.shards: no shards at {tmp}/nowhere; point it at a pipeline output dir or a folder of .tar shards"),
        ("", "data.shards is empty: set it to a pipeline output dir (--set data.shards=out/run1)"),
    ],
)  # fmt: skip
def test_untrainable_data_exits_2_with_one_line_and_writes_nothing(run_without_llm, tmp_path, shards, expected):
    shards = shards.format(run=run_without_llm, tmp=tmp_path)
    done, out = train_cli(tmp_path, f"data.shards={shards}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == expected.format(run=run_without_llm, tmp=tmp_path)
    assert not out.exists()


def test_fewer_shards_than_ranks_is_refused_before_launching(run_without_llm, tmp_path):
    done, out = train_cli(tmp_path, f"data.shards={run_without_llm}/shards/*.tar", "nproc_per_node=3")
    assert done.returncode == 2
    assert done.stderr.strip() == ("data.shards: 2 shard(s) for 3 ranks, and every rank needs one: use fewer ranks, "
                                   "or rerun the pipeline with a smaller shards.max_samples")  # fmt: skip
    assert not out.exists()
