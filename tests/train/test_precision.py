"""fp32 master weights under bf16 compute: a 1e-5 step changes a bf16 checkpoint, checkpoints round-trip,
and FSDP2 with bf16 compute and fp32 reduction trains the same way."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.tiny_train_model import build_model, build_tokenizer
from pipeline.core.config_load import load_config
from tests.train.synth import write_run
from train import checkpoint
from train.config import TrainConfig
from train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
LAYER = "model.language_model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory) -> Path:
    """The tiny model stored in bf16, as released checkpoints are."""
    out = tmp_path_factory.mktemp("bf16ckpt")
    tok = build_tokenizer(out)
    build_model(tok).to(torch.bfloat16).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"), samples=4, per_shard=2)


def sets(shards, ckpt, out, *extra) -> list[str]:
    return [f"data.shards={shards}", f"output.dir={out}", f"model.path={ckpt}", "model.video_pool_size=4",
            "model.activation_checkpointing=false", "data.frames=4", "data.image_size=64", "data.num_workers=0",
            "data.shuffle_buffer=0", "optim.max_steps=1", "optim.warmup_ratio=0", "optim.precision=bf16",
            "optim.lr.projector=1e-5", "optim.lr.language_model=1e-5", "output.save_every=1", "output.log_every=1",
            *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest(run) / "model.safetensors"))


def test_a_1e5_step_changes_a_bf16_checkpoint_through_fp32_master_weights(shards, bf16_checkpoint, tmp_path):
    before = load_file(str(bf16_checkpoint / "model.safetensors"))
    assert before[LAYER].dtype == torch.bfloat16
    train(load_config(None, sets(shards, bf16_checkpoint, tmp_path / "run"), model=TrainConfig))
    after = weights(tmp_path / "run")
    assert after[LAYER].dtype == torch.float32  # the master copy, not the bf16 one
    update = after[LAYER] - before[LAYER].float()
    changed = float((update != 0).float().mean())
    assert changed > 0.99, changed
    assert float(update.abs().max()) <= 1.0001e-5  # AdamW's first step moves each weight by at most lr
    # The same update applied to the bf16 weights would mostly round away: what training in bf16 did.
    in_bf16 = (before[LAYER].float() + update).to(torch.bfloat16)
    assert float((in_bf16 != before[LAYER]).float().mean()) < 0.3
    vision = [n for n in before if "vision_tower" in n]
    assert vision and all(after[n].dtype == torch.bfloat16 and torch.equal(after[n], before[n]) for n in vision)
    state = checkpoint.load_state(checkpoint.latest(tmp_path / "run"))
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)


def test_a_checkpoint_saved_after_training_round_trips(shards, bf16_checkpoint, tmp_path):
    """Stopping after step 1 and resuming gives bit-identical weights at step 3: the fp32 master weights and the
    optimizer state come back exactly."""
    extra = ("optim.max_steps=3", "output.keep=3")
    train(load_config(None, sets(shards, bf16_checkpoint, tmp_path / "full", *extra), model=TrainConfig))
    cut = tmp_path / "cut"
    train(load_config(None, sets(shards, bf16_checkpoint, cut, *extra), model=TrainConfig))
    for later in ("step-000002", "step-000003"):
        shutil.rmtree(cut / "checkpoints" / later, ignore_errors=True)
    assert checkpoint.latest(cut).name == "step-000001"
    from train.trainer import load_parts, prepare

    cfg = load_config(None, sets(shards, bf16_checkpoint, tmp_path / "x", *extra), model=TrainConfig)
    _, model = load_parts(cfg)
    prepare(cfg, model, checkpoint.latest(cut))  # load back into a model prepared as the trainer prepares it
    saved = weights(cut)
    for name, p in model.named_parameters():
        assert p.dtype == saved[name].dtype and torch.equal(p.detach(), saved[name]), name
    train(load_config(None, sets(shards, bf16_checkpoint, cut, *extra), model=TrainConfig))
    full, resumed = weights(tmp_path / "full"), weights(cut)
    assert full.keys() == resumed.keys() and all(torch.equal(full[n], resumed[n]) for n in full)
    assert not torch.equal(full[LAYER], load_file(str(bf16_checkpoint / "model.safetensors"))[LAYER].float())


def cli(out: Path, shards: Path, ckpt: Path, *extra: str) -> list[dict]:
    args = sets(shards, ckpt, out, "optim.max_steps=2", *extra)
    done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(ROOT / "configs/train/tiny_debug.yaml"),
                           *[x for s in args for x in ("--set", s)], "--set", "model.tiny=false"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_fsdp_trains_fp32_shards_with_bf16_compute_like_ddp_with_autocast(shards, bf16_checkpoint, tmp_path):
    fsdp = cli(tmp_path / "fsdp", shards, bf16_checkpoint, "nproc_per_node=2", "parallel=fsdp")
    ddp = cli(tmp_path / "ddp", shards, bf16_checkpoint, "nproc_per_node=2", "parallel=ddp")
    assert [r["items"] for r in fsdp] == [r["items"] for r in ddp]  # the same data, step by step
    assert [r["loss"] for r in fsdp] == pytest.approx([r["loss"] for r in ddp], rel=2e-2)
    before = load_file(str(bf16_checkpoint / "model.safetensors"))
    after = weights(tmp_path / "fsdp")
    assert after[LAYER].dtype == torch.float32 and float((after[LAYER] != before[LAYER].float()).float().mean()) > 0.99
    assert all(after[n].dtype == torch.bfloat16 and torch.equal(after[n], before[n]) for n in before if "vision_tower" in n)
    state = checkpoint.load_state(checkpoint.latest(tmp_path / "fsdp"))
    assert all(s["exp_avg"].dtype == torch.float32 for s in state["optimizer"]["state"].values())


def test_tf32_is_the_papers_setting_and_touches_only_cuda_devices():
    from train import optim
    from train.config import OptimConfig

    assert OptimConfig(max_steps=1).tf32 is True  # the paper's --tf32 True
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert optim.set_tf32(torch.device("cpu"), True) is False
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        assert optim.set_tf32(torch.device("cuda"), False) is False and not torch.backends.cuda.matmul.allow_tf32
        assert optim.set_tf32(torch.device("cuda"), True) is True and torch.backends.cuda.matmul.allow_tf32
