"""Sequence parallelism (`parallel.sp_size`): the ranks of a group split each sequence and its frames.

Ulysses (DeepSpeed-Ulysses): each rank holds a contiguous slice of the
sequence through the language model; around attention an all-to-all trades
the sequence split for a split of the heads, so each rank attends over the
whole sequence for its share of the heads, and a second all-to-all trades
back. It is exact: every token sees the same keys as without the split.
Grouped-query attention: the KV heads are split like the query heads when
their count divides by the group size, and repeated to the query head count
first otherwise. Each rank encodes only its share of the frames (the vision
tower and projector run per frame); the video tokens are gathered across the
group and the sequence is cut after they are placed. RoPE positions are the
global ones of each slice (right-padded batches need no padding mask: a
causal token never sees the padding after it).

Written here on `all_to_all_single` and `all_reduce`, which gloo (CPU) and
NCCL both run: PyTorch's own context parallelism replaces only the CUDA SDPA
kernels (flash, efficient, cuDNN), not the CPU one, and the maintained
Ulysses/ring libraries (yunchang, ring-flash-attn) build on flash-attn's CUDA
kernels, so neither runs the CPU tests that hold this exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from transformers import AttentionInterface
from transformers.modeling_outputs import CausalLMOutputWithPast

ATTENTION = "prolongvid_ulysses"  # a name with no mask function: transformers builds no mask (causal is implied)


@dataclass
class SequenceGroup:
    """This rank's sequence-parallel group: `rank` of `size`, over `group` (None: the whole world)."""

    rank: int
    size: int
    group: Any = None


def new_group(rank: int, world: int, size: int) -> SequenceGroup:
    """Consecutive ranks form the groups (every rank creates every group, as torch requires)."""
    if size == world:
        return SequenceGroup(rank % size, size, None)
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return SequenceGroup(rank % size, size, mine)


class _AllToAll(torch.autograd.Function):
    """Chunk j of dim 0 goes to rank j; its own inverse, so the backward is the same exchange."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()  # the exchange reads and writes flat memory: strides must be the plain ones
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


class _Gather(torch.autograd.Function):
    """Every rank's `x` stacked on a new dim 0; the gradient of each rank's part is summed over the group."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sp: SequenceGroup) -> torch.Tensor:
        ctx.sp = sp
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(sp.size)]
        dist.all_gather(parts, x, group=sp.group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.sp.group)
        return grad[ctx.sp.rank], None


def heads_to_sequence(x: torch.Tensor, sp: SequenceGroup) -> torch.Tensor:
    """(B, H, S/n, D) slices of the sequence -> (B, H/n, S, D): the whole sequence for this rank's heads."""
    b, h, s, d = x.shape
    chunks = x.reshape(b, sp.size, h // sp.size, s, d).transpose(0, 1)  # (n, B, H/n, S/n, D): chunk j to rank j
    got = _AllToAll.apply(chunks, sp.group)  # chunk j: rank j's slice of the sequence, for my heads
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // sp.size, sp.size * s, d)


def sequence_to_heads(x: torch.Tensor, sp: SequenceGroup) -> torch.Tensor:
    """(B, S, H/n, D) for this rank's heads -> (B, S/n, H, D): this rank's slice of the sequence, all heads."""
    b, s, h, d = x.shape
    chunks = x.reshape(b, sp.size, s // sp.size, h, d).transpose(0, 1)  # chunk j: sequence slice j, to rank j
    got = _AllToAll.apply(chunks, sp.group)  # chunk j: rank j's heads, for my slice
    return got.permute(1, 2, 0, 3, 4).reshape(b, s // sp.size, sp.size * h, d)


def ulysses_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      sliding_window: int | None = None, **_: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """Causal attention over the whole sequence for this rank's heads (transformers' attention signature)."""
    sp: SequenceGroup = module.sequence_group
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % sp.size:
        raise ValueError(f"{heads} attention heads do not split over parallel.sp_size {sp.size}")
    if sliding_window is not None:
        raise ValueError("sequence parallelism does not support sliding-window attention")
    if kv_heads % sp.size:  # grouped-query attention whose KV heads do not split: repeat them to the query heads
        key, value = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (key, value))
    q, k, v = (heads_to_sequence(t, sp) for t in (query, key, value))
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
    return sequence_to_heads(out.transpose(1, 2), sp), None


def enable(model: Any, sp: SequenceGroup) -> None:
    """Route the language model's attention through Ulysses and its forward through `forward` (`VideoLlava`)."""
    AttentionInterface.register(ATTENTION, ulysses_attention)
    lm = model.model.language_model
    lm.config._attn_implementation = ATTENTION
    for layer in lm.layers:
        layer.self_attn.sequence_group = sp
    model.sequence_group = sp


def video_tokens(model: Any, pixels: torch.Tensor, sp: SequenceGroup) -> torch.Tensor:
    """(B, F, C, H, W) -> (B, F x tokens a frame, D): this rank encodes its share of the frames, then all are gathered."""
    frames = pixels.shape[1]
    if frames < sp.size:
        raise ValueError(f"{frames} frames cannot be shared by parallel.sp_size {sp.size} ranks")
    sizes = [len(c) for c in torch.arange(frames).tensor_split(sp.size)]
    start = sum(sizes[: sp.rank])
    mine = model.model.get_video_features(pixels[:, start:start + sizes[sp.rank]].contiguous()).pooler_output
    per_frame = mine.shape[1] // sizes[sp.rank]
    pad = (sizes[0] - sizes[sp.rank]) * per_frame  # the first shares are the largest
    padded = torch.nn.functional.pad(mine, (0, 0, 0, pad)) if pad else mine
    parts = _Gather.apply(padded, sp)  # (n, B, largest share x per_frame, D)
    return torch.cat([parts[j, :, : sizes[j] * per_frame] for j in range(sp.size)], dim=1)


def pad_batch(batch: dict[str, torch.Tensor], size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the sequences to a multiple of `size` (padding is never supervised)."""
    from train.chat import IGNORE

    extra = -batch["input_ids"].shape[1] % size
    if not extra:
        return batch
    fill = {"input_ids": pad_id, "labels": IGNORE, "attention_mask": 0}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) if k in fill else v for k, v in batch.items()}


def local_slice(length: int, sp: SequenceGroup) -> slice:
    per = length // sp.size
    return slice(sp.rank * per, (sp.rank + 1) * per)


def forward(model: Any, sp: SequenceGroup, input_ids: torch.Tensor, pixel_values_videos: torch.Tensor,
            attention_mask: torch.Tensor | None = None, **_: Any) -> CausalLMOutputWithPast:  # fmt: skip
    """The logits of this rank's slice of each sequence (`pad_batch` first: the length must divide by the group)."""
    if input_ids.shape[1] % sp.size:
        raise ValueError(f"sequence length {input_ids.shape[1]} is not a multiple of parallel.sp_size {sp.size}")
    embeds = model.get_input_embeddings()(input_ids)
    features = video_tokens(model, pixel_values_videos, sp).flatten(0, 1).to(embeds.dtype)
    where = (input_ids == model.config.video_token_id).unsqueeze(-1).expand_as(embeds)
    if int(where[..., 0].sum()) != features.shape[0]:
        raise ValueError(f"{int(where[..., 0].sum())} video tokens for {features.shape[0]} video features")
    embeds = embeds.masked_scatter(where, features)
    mine = local_slice(input_ids.shape[1], sp)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[mine].expand(input_ids.shape[0], -1)
    hidden = model.model.language_model(inputs_embeds=embeds[:, mine], position_ids=positions, attention_mask=None,
                                        use_cache=False).last_hidden_state  # fmt: skip
    return CausalLMOutputWithPast(logits=model.lm_head(hidden))
