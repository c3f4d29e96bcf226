"""The paper's recipe, checked against its rules written out here: loss mask, <image> placement, loss averaging,
warmup, global batch and the frames each item gets."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny_train_model import build_tokenizer
from train.chat import IGNORE, ChatEncoder, RefusedConversation

SYSTEM = "You are a helpful assistant."
TURNS = [
    {"from": "human", "value": "Look closely. <image> What happens in the video?"},
    {"from": "gpt", "value": "A person walks across the room."},
    {"from": "human", "value": "How many objects are visible?\nCount them."},
    {"from": "gpt", "value": "Two.\n\nBoth are cars."},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def layout(turns, image_front: bool) -> tuple[str, list[tuple[int, int, int, int]]]:
    """The prompt text by the Qwen template, and for each assistant message (message start, answer start,
    answer end incl. <|im_end|>, message end incl. the newline after it) as character offsets."""
    text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    spans = []
    for turn in turns:
        role = "user" if turn["from"] == "human" else "assistant"
        value = turn["value"]
        if image_front and value.count("<image>") == 1 and not value.startswith("<image>"):
            value = "<image>\n" + value.replace("<image>", "").strip()  # the paper's placement rule
        start = len(text)
        text += f"<|im_start|>{role}\n"
        answer = len(text)
        text += f"{value}<|im_end|>"
        answer_end = len(text)
        text += "\n"
        if role == "assistant":
            spans.append((start, answer, answer_end, len(text)))
    return text, spans


def expected_supervision(tok, ids, text, spans, mode) -> list[bool]:
    """Walk the tokens over the text; say, from the rules alone, which ones the loss sees."""
    out, at = [], 0
    for tid in ids:
        piece = tok.decode([tid])
        assert text[at:at + len(piece)] == piece, (text[at:at + 40], piece)
        lo, hi = at, at + len(piece)
        at = hi
        if mode == "paper":
            in_message = any(s <= lo and hi <= e for s, _, _, e in spans)
            out.append(in_message or piece in ("<|im_start|>", "<|im_end|>", "\n"))
        else:
            out.append(any(a <= lo and hi <= ae for _, a, ae, _ in spans))
    assert at == len(text)
    return out


@pytest.mark.parametrize("mode", ["paper", "assistant_only"])
def test_every_supervised_position_follows_the_rules(tok, mode):
    encoder = ChatEncoder(tok, mask=mode)
    enc = encoder.encode(TURNS, video_tokens=1)
    text, spans = layout(TURNS, image_front=True)
    want = expected_supervision(tok, enc.input_ids, text, spans, mode)
    got = [label != IGNORE for label in enc.labels]
    assert got == want
    assert all(label in (IGNORE, tid) for label, tid in zip(enc.labels, enc.input_ids))
    assert enc.labels[enc.input_ids.index(encoder.video_token_id)] == IGNORE
    system = [label for tid, label in zip(enc.input_ids, enc.labels)][:len(tok(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")["input_ids"])]
    assert (sum(label != IGNORE for label in system) > 0) == (mode == "paper")  # the system turn's markers


def test_supervised_counts_per_mode(tok):
    counts = {m: sum(label != IGNORE for label in ChatEncoder(tok, mask=m).encode(TURNS, 3).labels)
              for m in ("paper", "assistant_only")}
    answers = sum(len(tok(t["value"], add_special_tokens=False)["input_ids"]) + 1 for t in TURNS if t["from"] == "gpt")
    assert counts["assistant_only"] == answers  # each answer and its <|im_end|>
    assert counts["paper"] > counts["assistant_only"]


def test_image_placement(tok):
    front = ChatEncoder(tok, image_placement="front").encode(TURNS[:2], 1)
    in_place = ChatEncoder(tok, image_placement="in_place").encode(TURNS[:2], 1)
    # the text around it is stripped, not re-spaced (LLaVA-NeXT leaves the double space)
    assert "<|im_start|>user\n<image>\nLook closely.  What happens" in tok.decode(front.input_ids)
    assert "<|im_start|>user\nLook closely. <image> What happens" in tok.decode(in_place.input_ids)
    two = [{"from": "human", "value": "a <image> b <image>"}, {"from": "gpt", "value": "x"}]
    with pytest.raises(RefusedConversation, match="several_placeholders"):  # the paper would insert the video twice
        ChatEncoder(tok).encode(two, 1)


def test_loss_per_sample_weighs_samples_equally_and_per_token_weighs_tokens():
    from train.loss import count_units, summed_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.full((2, 6), IGNORE)
    labels[0, 1:3] = torch.tensor([1, 2])  # 2 supervised tokens
    labels[1, 1:6] = torch.tensor([3, 4, 5, 6, 7])  # 5
    per_token = [torch.nn.functional.cross_entropy(logits[r, :-1], labels[r, 1:], ignore_index=IGNORE, reduction="sum")
                 for r in range(2)]  # fmt: skip
    assert count_units(labels, "token") == 7 and count_units(labels, "sample") == 2
    assert float(summed_loss(logits, labels, "token")) == pytest.approx(float(per_token[0] + per_token[1]))
    assert float(summed_loss(logits, labels, "sample")) == pytest.approx(float(per_token[0] / 2 + per_token[1] / 5))


def test_warmup_ceil_is_the_hugging_face_schedule_and_round_starts_a_step_ahead():
    import math

    from transformers import get_cosine_schedule_with_warmup

    from train.optim import lr_lambda, warmup_steps

    steps, ratio = 1010, 0.03
    assert warmup_steps(ratio, steps, "ceil") == 31 and warmup_steps(ratio, steps, "round") == 30
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(opt, math.ceil(ratio * steps), steps).lr_lambdas[0]
    ours = lr_lambda(ratio, steps, "ceil")
    assert [ours(s) for s in range(steps)] == pytest.approx([hf(s) for s in range(steps)])
    ahead = lr_lambda(ratio, steps, "round")
    assert ahead(0) == pytest.approx(1 / 30) and ahead(29) == pytest.approx(1.0)


def test_global_batch_sets_accumulation_from_the_world_size(tmp_path):
    from pipeline.core.config_load import ConfigError
    from pipeline.core.config_load import load_config
    from train.config import TrainConfig

    from train.topology import Topology

    base = [f"data.shards={tmp_path}", f"output.dir={tmp_path}", "model.tiny=true", "optim.max_steps=1"]
    cfg = load_config(None, base + ["optim.global_batch_size=256"], model=TrainConfig)
    assert [Topology.from_config(cfg, world).accum for world in (8, 32, 1)] == [32, 8, 256]
    with pytest.raises(ConfigError, match="optim.global_batch_size"):
        Topology.from_config(cfg, 3)
    with pytest.raises(ConfigError, match="optim"):
        load_config(None, base + ["optim.global_batch_size=8", "optim.grad_accum=2"], model=TrainConfig)
    assert Topology.from_config(load_config(None, base, model=TrainConfig), 4).accum == 1


PAPER = {  # the paper's stage settings (its stage-2 script; frames per stage from its stage table)
    "optim.lr.vision_tower": 0.0, "optim.lr.projector": 1e-5, "optim.lr.language_model": 1e-5,
    "optim.weight_decay": 0.0, "optim.warmup_ratio": 0.03, "optim.warmup_rounding": "ceil",
    "optim.global_batch_size": 256, "optim.loss_average": "sample", "optim.precision": "bf16", "optim.tf32": True,
    "data.batch_size": 1, "data.model_max_length": 256000, "data.frame_count": "fixed", "data.mask": "paper",
    "data.image_placement": "front", "data.order": "permutation", "model.video_pool_size": 12,
    "model.activation_checkpointing": True,
}


@pytest.mark.parametrize("name,frames", [("stage1_32f", 32), ("stage2_128f", 128), ("stage3_192f", 192)])
def test_stage_presets_carry_the_papers_recipe(name, frames):
    from pathlib import Path

    from pipeline.core.config_load import load_config
    from train.config import TrainConfig
    from train.topology import Topology

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "train" / f"{name}.yaml", model=TrainConfig)
    dumped = cfg.model_dump()

    def at(path):
        node = dumped
        for part in path.split("."):
            node = node[part]
        return node

    assert {k: at(k) for k in PAPER} == PAPER
    assert cfg.data.frames == frames and Topology.from_config(cfg, cfg.nproc_per_node).accum * cfg.nproc_per_node == 256


def test_one_recipe_sets_the_stage_defaults_and_every_preset_agrees():
    """pipeline/core/recipe.py holds the stages' frames and length: the stored set keeps every stage's exact frames,
    the token budget counts every stage, the trainer defaults to stage 1, and each preset trains its stage."""
    from pathlib import Path

    from filters.config import default_budget_stages
    from pipeline.core.config_load import load_config
    from pipeline.core.recipe import LONG_STAGE, MAX_LENGTH, PAPER_STAGES
    from pipeline.video.config_video import default_sets
    from train.config import TrainConfig
    from train.data import DataConfig

    assert [(s.name, s.frames) for s in PAPER_STAGES] == [("stage1", 32), ("stage2", 128), ("stage3", 192)]
    assert MAX_LENGTH == 256000 and LONG_STAGE.frames == 384  # the paper's table; stage 4 goes beyond it
    shard = next(s for s in default_sets() if s.name == "shard")
    assert shard.stage_frames == [s.frames for s in PAPER_STAGES] and shard.num_frames == PAPER_STAGES[-1].frames
    budget = [(b.name, b.frames, b.max_tokens) for b in default_budget_stages()]
    assert budget == [(s.name, s.frames, MAX_LENGTH) for s in PAPER_STAGES]
    data = DataConfig(shards="x")
    assert (data.frames, data.model_max_length) == (PAPER_STAGES[0].frames, MAX_LENGTH)
    presets = Path(__file__).resolve().parents[2] / "configs" / "train"
    stages = [*PAPER_STAGES, LONG_STAGE]
    names = [f"stage{n}_{s.frames}f.yaml" for n, s in enumerate(stages, start=1)]
    assert sorted(p.name for p in presets.glob("stage*.yaml")) == names
    for name, stage in zip(names, stages):
        cfg = load_config(presets / name, model=TrainConfig)
        assert (cfg.data.frames, cfg.data.model_max_length) == (stage.frames, MAX_LENGTH), name
