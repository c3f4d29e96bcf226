"""Sequence parallelism (`parallel.sp_size`) is exact: 2 ranks splitting each 64-frame sequence train as 1 rank does,
with DDP and with FSDP2, resume exactly, and the stage-4 preset runs on the tiny model with it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.core.config_load import load_config
from tests.train.synth import write_run
from train import checkpoint
from train.config import TrainConfig
from train.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
STAGE4 = ROOT / "configs/train/stage4_384f.yaml"
# The stage-4 preset on the tiny model: 64 frames (20 tokens each: ~1.3K tokens a sequence), fp32 so the
# comparison is to 1e-4, two conversations a step (accumulation 2 on the one data reader).
TINY = ["model.tiny=true", "model.init_from=null", "model.video_pool_size=4", "data.image_size=64", "data.frames=64",
        "data.num_workers=0", "data.model_max_length=4096", "optim.precision=fp32", "optim.global_batch_size=2",
        "optim.lr.projector=0.002", "optim.lr.language_model=0.002", "optim.warmup_ratio=0.1",
        "output.log_every=1", "output.console=false"]  # fmt: skip


@pytest.fixture(scope="module")
def run64(tmp_path_factory) -> Path:
    """Four videos of 64 stored frames, one conversation each, in four shards with an index (permutation order)."""
    return write_run(tmp_path_factory.mktemp("sp") / "run", samples=4, per_shard=1, frames=64)


def train_cli(out: Path, shards: Path, *extra: str) -> list[dict]:
    sets = TINY + [f"data.shards={shards}", f"output.dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(STAGE4), *[x for s in sets for x in ("--set", s)]],
                          capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_rank(run64, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("one") / "run"
    return train_cli(out, run64, "optim.max_steps=3", "nproc_per_node=1", "parallel.sp_size=1", "parallel.sharding=ddp")


def same_steps(ranks: list[dict], one: list[dict]) -> None:
    assert [r["items"] for r in ranks] == [r["items"] for r in one]  # the same conversations, step by step
    assert [r["loss"] for r in ranks] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["grad_norm"] for r in ranks] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    assert [r["tokens"] for r in ranks] == [r["tokens"] for r in one]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("sharding,ranks", [("ddp", 2), ("fsdp", 2), ("fsdp", 4)])
def test_sp_ranks_train_as_one_rank(run64, one_rank, tmp_path, sharding, ranks):
    """2 ranks: one group of 2 reads both conversations of a step; 4 ranks: two groups read one each (FSDP2 over
    all 4), so sequence parallelism composes with data parallelism."""
    got = train_cli(tmp_path / "sp", run64, "optim.max_steps=3", f"nproc_per_node={ranks}", "parallel.sp_size=2",
                    f"parallel.sharding={sharding}")  # fmt: skip
    assert len(got) == len(one_rank) == 3
    same_steps(got, one_rank)
    assert len({i for r in got for i in r["items"]}) == 4  # every video once an epoch: a group reads as one


@pytest.mark.timeout(1800)
def test_sp_resumes_exactly(run64, tmp_path):
    extra = ("optim.max_steps=4", "output.save_every=2", "output.keep=3", "nproc_per_node=2", "parallel.sp_size=2")
    full = train_cli(tmp_path / "full", run64, *extra)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    shutil.rmtree(cut / "checkpoints" / "step-000004")  # as if killed after step 2's checkpoint
    (cut / "log.jsonl").write_text("")
    resumed = train_cli(cut, run64, *extra)
    assert [r["step"] for r in resumed] == [3, 4]
    same_steps(resumed, full[2:])
    state = checkpoint.load_state(checkpoint.latest(cut))
    assert state["train"]["step"] == 4 and len(state["data"]) == 2  # each rank's data position is kept


def test_stage4_preset_loads_and_chains_from_stage3():
    cfg = load_config(STAGE4, [], model=TrainConfig)
    stage3 = load_config(ROOT / "configs/train/stage3_192f.yaml", [], model=TrainConfig)
    assert cfg.data.frames == 384 and cfg.parallel.sp_size > 1 and cfg.parallel.sharding == "fsdp"
    assert cfg.model.init_from == stage3.output.dir  # starts from stage 3's weights
    assert 59_000 < cfg.data.frames * 156 < 61_000  # about 60K video tokens a sequence
    topology = Topology.from_config(cfg, 8)
    assert topology.readers == 8 // cfg.parallel.sp_size and topology.fsdp
    assert topology.accum == 256 // topology.readers  # a group reads one micro-batch
    assert stage3.parallel.sharding == "fsdp" and stage3.parallel.sp_size == 1  # the string form still loads
    flipped = load_config(ROOT / "configs/train/stage3_192f.yaml", ["parallel.sp_size=2"], model=TrainConfig)
    assert flipped.parallel.sp_size == 2 and flipped.parallel.sharding == "fsdp"


def test_bad_sp_settings_name_the_field(tmp_path):
    from pipeline.core.config_load import ConfigError

    base = [f"data.shards={tmp_path}", f"output.dir={tmp_path}", "model.tiny=true", "optim.max_steps=1"]
    with pytest.raises(ConfigError, match="parallel.sp_size"):
        load_config(None, base + ["parallel.sp_size=0"], model=TrainConfig)
    with pytest.raises(ConfigError, match="parallel.sharding"):
        load_config(None, base + ["parallel.sharding=zero3"], model=TrainConfig)
    cfg = load_config(None, base + ["parallel.sp_size=3"], model=TrainConfig)
    with pytest.raises(ConfigError, match="parallel.sp_size 3 does not divide the 4 ranks"):
        Topology.from_config(cfg, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward_backward(rank: int, world: int, port: int, out: str) -> None:
    """A model whose one KV head does not split over 2 ranks, 5 frames (3 + 2 a rank), a padded batch of 2."""
    import torch.distributed as dist

    from fixtures.tiny_train_model import build_tokenizer
    from train import sequence
    from train.loss import next_tokens, summed_loss, target_loss
    from train.model import VideoLlava, tiny_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tok = build_tokenizer()
    video = tok.convert_tokens_to_ids("<video>")
    config = tiny_config(len(tok), video, tok.convert_tokens_to_ids("<image>"))
    config.text_config.num_key_value_heads = 1
    torch.manual_seed(0)
    model = VideoLlava(config).float().train()
    frames, per_frame = 5, 20
    rows = [[21, 25, 27] + [video] * frames * per_frame + [29, 31, 33, 22, 28, 26, 24],
            [23, 25] + [video] * frames * per_frame + [29, 22]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = ids.clone()
    labels[:, :3 + frames * per_frame] = -100  # the answers are supervised
    labels[1, len(rows[1]):] = -100
    pixels = torch.randn(2, frames, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = (labels != -100) | (torch.arange(width) < torch.tensor([[len(r)] for r in rows]))
    trained = [n for n, p in model.named_parameters() if "vision_tower" not in n]
    ref, expected = {}, {}
    for average in ("sample", "token"):  # the whole sequence on one rank
        loss = summed_loss(model(input_ids=ids, pixel_values_videos=pixels, attention_mask=mask.long()).logits,
                           labels, average)  # fmt: skip
        loss.backward()
        ref[average], expected[average] = loss.detach(), {n: model.get_parameter(n).grad.clone() for n in trained}
        model.zero_grad(set_to_none=True)
    sp = sequence.new_group(rank, world, world)
    sequence.enable(model, sp)
    batch = sequence.pad_batch({"input_ids": ids, "labels": labels}, world, 0)
    mine = sequence.local_slice(batch["input_ids"].shape[1], sp)
    total, grads = {}, {}
    for average in ("sample", "token"):  # each rank its slice; the sums over the ranks are compared
        logits = model(input_ids=batch["input_ids"], pixel_values_videos=pixels).logits
        part = target_loss(logits, next_tokens(batch["labels"])[:, mine], (labels[:, 1:] != -100).sum(dim=1), average)
        part.backward()
        total[average] = part.detach().clone()
        dist.all_reduce(total[average])
        grads[average] = {n: model.get_parameter(n).grad.clone() for n in trained}
        for grad in grads[average].values():
            dist.all_reduce(grad)
        model.zero_grad(set_to_none=True)
    if rank == 0:
        torch.save({"ref": ref, "total": total, "expected": expected, "grads": grads}, out)
    dist.destroy_process_group()


@pytest.mark.timeout(900)
def test_ulysses_matches_full_attention_with_gqa_uneven_frames_and_padding(tmp_path):
    out = tmp_path / "grads.pt"
    torch.multiprocessing.spawn(_forward_backward, args=(2, _free_port(), str(out)), nprocs=2)
    got = torch.load(out, weights_only=True)
    for average in ("sample", "token"):
        assert float(got["total"][average]) == pytest.approx(float(got["ref"][average]), rel=1e-5), average
        for name, want in got["expected"][average].items():
            diff = float((got["grads"][average][name] - want).abs().max())
            assert diff <= 1e-4 * float(want.abs().max()) + 1e-7, (average, name, diff)
