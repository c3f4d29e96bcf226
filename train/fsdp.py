"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for models whose weights, gradients and AdamW state do not fit DDP.

Every transformer block (the LM's decoder layers, the vision tower's encoder
layers) is its own FSDP unit, then the whole model: parameters are sharded
across ranks and gathered one block at a time. Frozen parameters (the vision
tower) stay frozen inside the units. The trainable parameters arrive in fp32
(`optim.set_precision`), so the shards are fp32 master weights; with bf16 the
policy gathers them as bf16 for compute and reduces gradients in fp32, so no
autocast is needed. Checkpoints stay plain:
the full model state is gathered to rank 0 (on CPU) and saved as the same
safetensors a DDP run writes (transformers loads them; the next stage starts
from them in either mode); the optimizer state in `state.pt` is the full one,
keyed by parameter name, and resumes an FSDP run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

BLOCK_SUFFIXES = ("DecoderLayer", "EncoderLayer")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks: the natural FSDP units."""
    return [m for m in model.modules() if type(m).__name__.endswith(BLOCK_SUFFIXES)]


def shard(model: torch.nn.Module, world: int, device: torch.device, bf16: bool) -> torch.nn.Module:
    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    units = blocks(model)
    if not units:
        raise ValueError(f"no transformer blocks ({'/'.join(BLOCK_SUFFIXES)}) found in {type(model).__name__} to shard")
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def set_gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """Skip the reduce-scatter on micro-batches before the last one of a step (FSDP's no_sync)."""
    model.set_requires_gradient_sync(sync)  # type: ignore[operator]


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every rank must call it; rank 0 gets the whole state dict on CPU, the others an empty one."""
    return get_model_state_dict(model, options=FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`state` is the full optimizer state every rank read from the checkpoint; each keeps its shard."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
