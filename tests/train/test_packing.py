"""Packing (`data.packing`) is exact: items end to end in one row give the loss and gradients they give alone,
with any mix of frame counts and lengths, and a packed training run steps as the same items unpacked (one
rank, and two under FSDP2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures.tiny_train_model import build_model, build_tokenizer
from pipeline.core.config_load import load_config
from tests.train.synth import write_run
from train.batching import collate
from train.chat import IGNORE, ChatEncoder
from train.config import TrainConfig
from train.loss import count_units, summed_loss
from train.model import tokens_per_frame
from train.packing import collate_packed, enable, item_bounds, model_inputs, segments, token_count

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = ["Yes.", "A person walks across the room, then sits down by the window and reads for a while.",
           "The camera pans to the left and stops on a red door."]  # fmt: skip


@pytest.fixture(scope="module", params=["per_item", "block_mask"])
def parts(request):
    """The trainer's attention for packed rows (one SDPA call per item) and transformers' block-causal mask."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, pool=4, seed=3).float().train()
    if request.param == "per_item":
        enable(model)
        assert model.model.language_model.config._attn_implementation == "prolongvid_packed"
    return tokenizer, model


def items(tokenizer, model, frame_counts: list[int]) -> list[dict]:
    """One item per frame count, each with its own answer length and frames."""
    encoder = ChatEncoder(tokenizer, video_token="<video>")
    per_frame = tokens_per_frame(model.config)
    made = []
    for n, frames in enumerate(frame_counts):
        turns = [{"from": "human", "value": "<image>\nWhat happens?" + " Be precise." * n},
                 {"from": "gpt", "value": ANSWERS[n % len(ANSWERS)]}]  # fmt: skip
        enc = encoder.encode(turns, frames * per_frame)
        made.append({"id": f"i{n}", "input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
                     "pixel_values": torch.randn(frames, 3, 64, 64, generator=torch.Generator().manual_seed(n))})  # fmt: skip
    return made


def loss_and_grads(model, batches: list[dict], average: str) -> tuple[float, list[torch.Tensor]]:
    """The mean over the batches' units, as the trainer divides it, and the gradients of every parameter."""
    model.zero_grad(set_to_none=True)
    units = sum(count_units(b["labels"], average, segments(b)) for b in batches)
    total = 0.0
    for batch in batches:
        inputs = model_inputs({k: v for k, v in batch.items() if k != "ids"})
        loss = summed_loss(model(**inputs).logits, batch["labels"], average, segments(batch)) / units
        loss.backward()
        total += float(loss.detach())
    return total, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("average", ["sample", "token"])
def test_packed_row_trains_as_its_items_alone(parts, average):
    tokenizer, model = parts
    got = items(tokenizer, model, [4, 8, 6])
    alone = loss_and_grads(model, [collate([i], tokenizer.pad_token_id) for i in got], average)
    packed_batch = collate_packed(got)
    assert packed_batch["input_ids"].shape[0] == 1 and packed_batch["pixel_values_videos"].shape[1] == 18
    assert token_count(packed_batch) == sum(len(i["input_ids"]) for i in got)  # nothing padded
    packed = loss_and_grads(model, [packed_batch], average)
    assert packed[0] == pytest.approx(alone[0], rel=1e-5)
    assert len(packed[1]) == len(alone[1]) > 0
    for a, b in zip(packed[1], alone[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_items_do_not_see_each_other(parts):
    """The second item's logits in a packed row are its logits alone, whatever the first item holds."""
    tokenizer, model = parts
    first, second = items(tokenizer, model, [4, 6])
    other = dict(first, pixel_values=torch.zeros_like(first["pixel_values"]), input_ids=first["input_ids"].clone())
    other["input_ids"][-3:] = tokenizer.pad_token_id  # a different end of the first item's answer
    after = slice(len(first["input_ids"]), None)
    with torch.no_grad():
        a = model(**model_inputs(collate_packed([first, second]))).logits[0, after]
        b = model(**model_inputs(collate_packed([other, second]))).logits[0, after]
        alone = model(**model_inputs(collate([second], tokenizer.pad_token_id))).logits[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, alone, rtol=1e-4, atol=1e-5)


def test_first_label_of_each_item_is_never_a_target():
    ids = torch.arange(5)
    got = collate_packed([{"input_ids": ids, "labels": ids.clone(), "pixel_values": torch.zeros(2, 3, 4, 4)},
                          {"input_ids": ids[:3], "labels": ids[:3].clone(), "pixel_values": torch.zeros(1, 3, 4, 4)}])  # fmt: skip
    assert got["labels"][0].tolist() == [IGNORE, 1, 2, 3, 4, IGNORE, 1, 2]
    assert got["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert segments(got)[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert item_bounds(got["position_ids"]) == [(0, 5), (5, 8)]
    assert count_units(got["labels"], "sample", segments(got)) == 2 and count_units(got["labels"], "token") == 6


def test_packing_with_sequence_parallelism_fails_at_load(tmp_path):
    with pytest.raises(Exception, match="data.packing"):
        load_config(ROOT / "configs/train/tiny_debug.yaml", [f"data.shards={tmp_path}", f"output.dir={tmp_path / 'o'}",
                    "data.packing=true", "parallel.sp_size=2"], model=TrainConfig)  # fmt: skip


def train_cli(out: Path, shards: Path, *extra: str) -> list[dict]:
    sets = ["model.tiny=true", "data.image_size=64", "data.num_workers=0", "data.frame_count=up_to_stored",
            "data.frames=8", "data.shuffle_buffer=0", "optim.precision=fp32", "optim.max_steps=3",
            "optim.lr.projector=0.002", "optim.lr.language_model=0.002", "output.log_every=1",
            "output.console=false", f"data.shards={shards}", f"output.dir={out}", *extra]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(ROOT / "configs/train/tiny_debug.yaml"),
                           *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, cwd=ROOT,
                          timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("ranks", [1, 2])
def test_packed_run_steps_as_the_same_items_unpacked(tmp_path, ranks):
    """Shards of 8-frame and 3-frame videos: unpacked, one item a micro-batch (they cannot stack), two
    micro-batches a step on each rank; packed, a rank's two items in one row. Same items, loss and gradient
    norm, on one rank and on two under FSDP2."""
    write_run(tmp_path / "a", samples=3 * ranks, per_shard=1, frames=8)  # an even count a rank: no partial batch
    write_run(tmp_path / "b", samples=3 * ranks, per_shard=1, frames=3)
    shards = f"{tmp_path}/[ab]/shards/*.tar"
    both = [f"optim.global_batch_size={2 * ranks}", f"nproc_per_node={ranks}", "parallel.sharding=fsdp"]
    unpacked = train_cli(tmp_path / "unpacked", shards, "data.batch_size=1", *both)
    packed = train_cli(tmp_path / "packed", shards, "data.batch_size=2", "data.packing=true", *both)
    assert len(packed) == len(unpacked) == 3
    assert [r["items"] for r in packed] == [r["items"] for r in unpacked]
    assert [r["loss"] for r in packed] == pytest.approx([r["loss"] for r in unpacked], rel=1e-4)
    assert [r["grad_norm"] for r in packed] == pytest.approx([r["grad_norm"] for r in unpacked], rel=1e-4)
    assert [r["tokens"] for r in packed] == [r["tokens"] for r in unpacked]  # nothing padded either way
