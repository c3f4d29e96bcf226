"""The video LLM built on transformers' LLaVA-OneVision with the paper's 156-token (here 20-token) frames."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny_train_model import build_model, build_tokenizer
from train.chat import ChatEncoder
from train.model import VideoLlava, pool_frames, tokens_per_frame

TURNS = [{"from": "human", "value": "<image>\nWhat happens in the video?"},
         {"from": "gpt", "value": "A person walks across the room."}]


@pytest.fixture(scope="module")
def parts():
    tok = build_tokenizer()
    model = build_model(tok)
    return tok, model, ChatEncoder(tok, video_token="<video>")


def batch(encoder, model, frames=3, seed=0):
    per = tokens_per_frame(model.config)
    enc = encoder.encode(TURNS, frames * per)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, frames, 3, 64, 64, generator=g) * 2 - 1
    return (torch.tensor([enc.input_ids]), torch.tensor([enc.labels]), pixels)


def test_the_paper_pooling_gives_pool_x_pool_plus_a_newline_per_row(parts):
    tok, model, encoder = parts
    assert tokens_per_frame(model.config) == 4 * 5
    pixels = torch.rand(2, 3, 3, 64, 64)
    feats = model.model.get_video_features(pixels).pooler_output
    assert feats.shape == (2, 3 * 20, model.config.text_config.hidden_size)
    newline = model.model.image_newline
    rows = feats.view(2, 3, 4, 5, -1)
    assert torch.allclose(rows[:, :, :, 4], newline.expand_as(rows[:, :, :, 4]))  # the last token of every row
    assert pool_frames(torch.rand(5, 27 * 27, 8), 12).shape == (5, 12, 12, 8)  # the paper's 27x27 -> 12x12


def test_forward_loss_and_a_mismatched_video_token_count_is_refused(parts):
    tok, model, encoder = parts
    ids, labels, pixels = batch(encoder, model)
    out = model(input_ids=ids, labels=labels, pixel_values_videos=pixels)
    assert out.logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(out.loss)
    with pytest.raises(ValueError):
        model(input_ids=ids, pixel_values_videos=torch.rand(1, 2, 3, 64, 64))  # 2 frames for 3 frames of tokens


def test_checkpoints_load_with_transformers_own_class(parts, tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    tok, model, encoder = parts
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    plain, info = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = VideoLlava.from_pretrained(tmp_path / "ckpt").eval()
    assert ours.config.video_pool_size == 4
    ids, labels, pixels = batch(encoder, model)
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids, labels=labels, pixel_values_videos=pixels).loss,
                              model(input_ids=ids, labels=labels, pixel_values_videos=pixels).loss, atol=1e-5)


def test_vision_tower_frozen_and_loss_falls_on_a_tiny_task(parts):
    tok, _, encoder = parts
    model = build_model(tok, seed=1).train()
    model.freeze_vision_tower()
    groups = model.parameter_groups()
    assert not groups["vision_tower"] and groups["projector"] and groups["language_model"]
    before = {n: p.detach().clone() for n, p in model.model.vision_tower.named_parameters()}
    opt = torch.optim.AdamW([{"params": groups["projector"], "lr": 1e-3}, {"params": groups["language_model"], "lr": 1e-3}])
    ids, labels, pixels = batch(encoder, model)
    losses = []
    for _ in range(25):
        loss = model(input_ids=ids, labels=labels, pixel_values_videos=pixels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0] and losses == sorted(losses, reverse=True), losses
    assert all(torch.equal(p, before[n]) for n, p in model.model.vision_tower.named_parameters())
