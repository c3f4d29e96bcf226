"""Packing (`data.packing`): a micro-batch's items in one row, with no padding and no mixing between them.

Bucketed batches stack their items, so they need one frame count and pad every
row to the longest; a packed batch lays the items end to end in a single row
and their frames end to end in one video (the vision tower encodes frames one
by one, and the language model's video tokens take the features in order), so
any mix of frame counts and lengths trains together with nothing padded.

Items stay apart through their position ids, which restart at 0 for each item:
RoPE then gives every token the position it has alone, and transformers reads
the restarts as packed sequences when no attention mask is given (block-causal
masks for SDPA and eager attention on CPU, variable-length kernels with
flash-attention on GPU). Each item's first label is ignored, so no token learns
to predict the next item's first token; `segments` (which item each position
belongs to) lets the loss average per sample as it does unpacked.
"""

from __future__ import annotations

from typing import Any

import torch

from train.chat import IGNORE


def collate_packed(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One row: input ids, labels and position ids end to end; every item's frames as one video."""
    frame_shapes = {tuple(i["pixel_values"].shape[1:]) for i in items}
    if len(frame_shapes) > 1:
        raise ValueError(f"packed items have frames of different sizes {sorted(frame_shapes)}")
    labels = []
    for item in items:
        own = item["labels"].clone()
        own[0] = IGNORE  # never a target unpacked either: the first label has no token before it
        labels.append(own)
    return {"input_ids": torch.cat([i["input_ids"] for i in items]).unsqueeze(0),
            "labels": torch.cat(labels).unsqueeze(0),
            "position_ids": torch.cat([torch.arange(len(i["input_ids"])) for i in items]).unsqueeze(0),
            "pixel_values_videos": torch.cat([i["pixel_values"] for i in items]).unsqueeze(0),
            "ids": [str(i.get("id", "")) for i in items]}  # fmt: skip


def segments(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Which item each position belongs to, numbered per row (None for a batch that is not packed)."""
    positions = batch.get("position_ids")
    if positions is None:
        return None
    return (positions == 0).long().cumsum(dim=1) - 1


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the model's forward takes: no labels (the trainer's loss reads them); a packed batch also gets no
    attention mask and no cache, the two conditions under which transformers builds the packed mask."""
    inputs: dict[str, Any] = {k: v for k, v in batch.items() if k != "labels"}
    if "position_ids" in inputs:
        inputs["use_cache"] = False
    return inputs


def token_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model attends over (padding excluded)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
