"""`prolongvid train CONFIG --dry-run`: the per-GPU memory estimate is printed, and its numbers follow the settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config_load import load_config
from train.config import TrainConfig
from train.plan import GIB, memory_plan, shapes
from train.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
STAGE4 = ROOT / "configs/train/stage4_384f.yaml"


def stage4(*sets: str) -> TrainConfig:
    return load_config(STAGE4, list(sets), model=TrainConfig)


def plan(cfg: TrainConfig, shapes_7b):
    return memory_plan(cfg, Topology.from_config(cfg, 8), shapes_7b)  # one node of 8


@pytest.fixture(scope="module")
def shapes_7b():
    return shapes(stage4())  # the 7B shapes on the meta device: no weights are read or allocated


def test_sp_halves_activations_and_fsdp_divides_the_states(shapes_7b):
    sp1 = plan(stage4("parallel.sp_size=1"), shapes_7b)
    sp2 = plan(stage4("parallel.sp_size=2"), shapes_7b)
    assert sp1.tokens == sp2.tokens == 384 * 156 + 512
    for part in ("lm_activations", "logits", "vision"):  # what a rank computes for its slice (and frames)
        assert getattr(sp2, part) == pytest.approx(getattr(sp1, part) / 2, rel=1e-12), part
    assert sp2.embeddings == sp1.embeddings  # the whole sequence's embeddings are on every rank of the group
    assert sp2.activations < 0.55 * sp1.activations
    assert (sp2.weights, sp2.gradients, sp2.optimizer) == (sp1.weights, sp1.gradients, sp1.optimizer)

    ddp = plan(stage4("parallel.sharding=ddp"), shapes_7b)
    fsdp = plan(stage4(), shapes_7b)
    for part in ("weights", "gradients", "optimizer"):
        assert getattr(fsdp, part) == pytest.approx(getattr(ddp, part) / 8, rel=1e-12), part
    assert fsdp.activations == ddp.activations
    # A 7B LM (and projector) trains: ~7.6e9 x (4 weights + 4 gradients + 8 AdamW) bytes whole under DDP.
    assert 100 < (ddp.weights + ddp.gradients + ddp.optimizer) / GIB < 130
    assert fsdp.total / GIB < 80  # the preset fits an 80 GB GPU


def test_activation_checkpointing_keeps_one_layer(shapes_7b):
    on = plan(stage4(), shapes_7b)
    off = plan(stage4("model.activation_checkpointing=false"), shapes_7b)
    assert off.lm_activations > 10 * on.lm_activations


def test_heads_that_do_not_split_are_refused(shapes_7b):
    with pytest.raises(ValueError, match="28 attention heads"):
        plan(stage4("parallel.sp_size=8"), shapes_7b)


def dry_run(*sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "train", str(STAGE4), "--dry-run", *[x for s in sets for x in ("--set", s)]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def gib(out: str, row: str) -> float:
    return float(re.search(rf"^{re.escape(row)}\s+([\d.]+)$", out, re.M).group(1))


def test_dry_run_prints_the_estimate_and_trains_nothing(tmp_path):
    done = dry_run(f"output.dir={tmp_path / 'out'}", "data.shards=/nonexistent")  # no data is needed to plan
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.startswith("384 frames -> 60416 tokens a sequence (15104 a rank); 8 ranks, fsdp, sp 4 (2 reading data)")
    parts = [gib(out, r) for r in ("weights", "gradients", "optimizer state", "activations")]
    assert gib(out, "total") == pytest.approx(sum(parts), abs=0.02)
    assert gib(out, "activations") == pytest.approx(sum(gib(out, r) for r in (
        "  language model", "  logits and loss", "  vision tower and projector", "  sequence embeddings")), abs=0.02)
    assert not (tmp_path / "out").exists()
    sp2 = dry_run("parallel.sp_size=2").stdout
    assert gib(sp2, "  language model") == pytest.approx(2 * gib(out, "  language model"), abs=0.02)
    bad = dry_run("parallel.sp_size=3")
    assert bad.returncode == 2 and "parallel.sp_size" in bad.stderr


def test_dry_run_on_the_tiny_model():
    done = dry_run("model.tiny=true", "model.video_pool_size=4", "data.frames=64", "nproc_per_node=2",
                   "parallel.sp_size=2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shapes: the tiny test model" in done.stdout
    assert done.stdout.strip().startswith("64 frames -> 1792 tokens a sequence (896 a rank); 2 ranks, fsdp, sp 2")
