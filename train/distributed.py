"""The process group: one process or many (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK), NCCL on GPUs, gloo on CPUs."""

from __future__ import annotations

import os
from typing import Any

import torch


def setup_distributed(world: int) -> torch.device:
    """This rank's device, joining the process group when there are several ranks (`world`: the topology's)."""
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def gather(value: Any, world: int) -> list[Any]:
    """Every rank's `value`, in rank order (a collective: every rank calls it)."""
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def all_reduce_sum(value: float, device: torch.device, world: int) -> float:
    """The sum of `value` over the ranks (a collective when world > 1)."""
    if world == 1:
        return value
    t = torch.tensor([value], device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())


def barrier(world: int) -> None:
    """Every rank waits for the others (a collective when world > 1)."""
    if world > 1:
        torch.distributed.barrier()
