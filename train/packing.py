"""Packing (`data.packing`): a micro-batch's items in one row, with no padding and no mixing between them.

Bucketed batches stack their items, so they need one frame count and pad every
row to the longest; a packed batch lays the items end to end in a single row
and their frames end to end in one video (the vision tower encodes frames one
by one, and the language model's video tokens take the features in order), so
any mix of frame counts and lengths trains together with nothing padded.

Items stay apart through their position ids, which restart at 0 for each item:
RoPE then gives every token the position it has alone. With flash-attention,
transformers reads the restarts and runs its variable-length kernel; otherwise
`enable` routes the language model's attention through `packed_attention`,
one causal SDPA call per item, so attention costs the sum of the items'
squares rather than the row's square, as a block-causal mask would (SDPA
computes every masked block). Each item's first label is ignored, so no token
learns to predict the next item's first token; `segments` (which item each
position belongs to) lets the loss average per sample as it does unpacked.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from train.chat import IGNORE

ATTENTION = "prolongvid_packed"  # a name with no mask function: transformers builds no mask (causal per item)
VARLEN_KERNELS = ("flash_attention_2", "flash_attention_3")  # they read packed position ids themselves


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


def item_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each item of a packed row: where its position ids restart at 0."""
    if position_ids.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, not {position_ids.shape[0]}")
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], position_ids.shape[1]]))


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, position_ids: torch.Tensor | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """Causal attention within each item (transformers' attention signature; output (B, L, heads, head dim))."""
    if sliding_window is not None:
        raise ValueError("data.packing does not support sliding-window attention")
    if position_ids is None:  # not packed (generation, evaluation): plain causal attention
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    parts = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, dropout,
                                    scaling, is_causal=True)[0] for a, b in item_bounds(position_ids)]  # fmt: skip
    return torch.cat(parts, dim=1), None


def enable(model: Any) -> None:
    """Attention per item for packed rows, unless the model already runs a variable-length kernel."""
    lm = model.model.language_model
    if lm.config._attn_implementation in VARLEN_KERNELS:
        return
    AttentionInterface.register(ATTENTION, packed_attention)
    lm.config._attn_implementation = ATTENTION
