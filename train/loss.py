"""The training loss: next-token cross-entropy summed over units (supervised tokens or samples), so a step can
divide by its global unit count across micro-batches and ranks (`train/trainer.py`).

A packed batch (`train/packing.py`) holds several samples in a row; `segments` numbers them, so a sample is a
(row, segment) pair rather than a row.
"""

from __future__ import annotations

import torch

from train.chat import IGNORE


def _samples(labels: torch.Tensor, segments: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Each target position's sample number (targets are labels[:, 1:]) and how many numbers there are."""
    rows, width = labels.shape
    if segments is None:
        return torch.arange(rows, device=labels.device).unsqueeze(1).expand(rows, width - 1), rows
    per_row = int(segments.max()) + 1
    owner = segments[:, 1:] + per_row * torch.arange(rows, device=labels.device).unsqueeze(1)
    return owner, rows * per_row


def count_units(labels: torch.Tensor, average: str, segments: torch.Tensor | None = None) -> int:
    """What the loss averages over in a micro-batch: supervised tokens, or samples with any supervised token."""
    supervised = labels[:, 1:] != IGNORE
    if average == "token":
        return int(supervised.sum())
    owner, _ = _samples(labels, segments)
    return int(torch.unique(owner[supervised]).numel())


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, average: str = "token",
                segments: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Next-token cross-entropy summed over units (the caller divides by the step's global unit count).

    token: the sum over supervised tokens; sample: the sum over samples of each sample's mean token loss.
    """
    target = labels[:, 1:]
    if segments is None:
        return target_loss(logits[:, :-1], target, (target != IGNORE).sum(dim=1), average)
    per_token = _per_token(logits[:, :-1], target)
    if average == "token":
        return per_token.sum()
    owner, n = _samples(labels, segments)
    sums = torch.zeros(n, device=per_token.device).index_add(0, owner.reshape(-1), per_token.reshape(-1))
    counts = torch.zeros(n, device=per_token.device).index_add_(0, owner.reshape(-1), (target != IGNORE).float().reshape(-1))  # fmt: skip
    return (sums[counts > 0] / counts[counts > 0]).sum()


def next_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Each position's target (the next label; IGNORE after the last), so a slice of positions has its own."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)


def _per_token(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE, reduction="none").view(target.shape)  # fmt: skip


def target_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor, average: str) -> torch.Tensor:
    """Cross-entropy of `logits` against `target` (aligned), summed over units.

    `counts`: each sample's supervised tokens over its whole sequence, so a rank holding a slice of it (sequence
    parallelism) adds its share of the sample's mean.
    """
    per_token = _per_token(logits, target)
    if average == "token":
        return per_token.sum()
    return (per_token.sum(dim=1)[counts > 0] / counts[counts > 0]).sum()
