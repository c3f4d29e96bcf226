"""The training loss: next-token cross-entropy summed over units (supervised tokens or samples), so a step can
divide by its global unit count across micro-batches and ranks (`train/trainer.py`)."""

from __future__ import annotations

import torch

from train.chat import IGNORE


def count_units(labels: torch.Tensor, average: str) -> int:
    """What the loss averages over in a micro-batch: supervised tokens, or samples with any supervised token."""
    supervised = labels[:, 1:] != IGNORE
    return int(supervised.sum()) if average == "token" else int(supervised.any(dim=1).sum())


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, average: str = "token") -> torch.Tensor:
    """Next-token cross-entropy summed over units (the caller divides by the step's global unit count).

    token: the sum over supervised tokens; sample: the sum over samples of each sample's mean token loss.
    """
    target = labels[:, 1:]
    return target_loss(logits[:, :-1], target, (target != IGNORE).sum(dim=1), average)


def next_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Each position's target (the next label; IGNORE after the last), so a slice of positions has its own."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)


def target_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor, average: str) -> torch.Tensor:
    """Cross-entropy of `logits` against `target` (aligned), summed over units.

    `counts`: each sample's supervised tokens over its whole sequence, so a rank holding a slice of it (sequence
    parallelism) adds its share of the sample's mean.
    """
    per_token = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                  ignore_index=IGNORE, reduction="none").view(target.shape)  # fmt: skip
    if average == "token":
        return per_token.sum()
    return (per_token.sum(dim=1)[counts > 0] / counts[counts > 0]).sum()
