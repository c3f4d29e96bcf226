"""What is trained and how: the parts and their parameter groups, frozen parts, fp32 master weights, AdamW with a
learning rate per part, and the warmup + cosine schedule.

Precision follows the paper's bf16 training with fp32 master weights: every
trainable parameter (and so AdamW's state and every update) is fp32, whatever
dtype the checkpoint was stored in; at 1e-5 an update of a bf16 weight would
mostly round away. The forward runs in bf16 (autocast, or FSDP's
param_dtype); frozen parts are stored in bf16, where they are only read.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

# Parameter-name prefixes of the parts a learning rate of 0 freezes.
PART_PREFIXES = {"vision_tower": ("vision_tower",), "projector": ("multi_modal_projector", "image_newline"),
                 "language_model": ("language_model", "lm_head")}  # fmt: skip


def part_of(name: str) -> str:
    for part, prefixes in PART_PREFIXES.items():
        if any(p in name for p in prefixes):
            return part
    return "language_model"


def parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters by part (every part present, maybe empty), for per-part learning rates."""
    groups: dict[str, list[torch.nn.Parameter]] = {part: [] for part in PART_PREFIXES}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[part_of(name)].append(p)
    return groups


def freeze(model: torch.nn.Module, rates: dict[str, float]) -> None:
    """Parts whose learning rate is 0 get no gradients (the paper freezes the vision tower)."""
    for name, p in model.named_parameters():
        p.requires_grad_(rates[part_of(name)] > 0)


def set_precision(model: torch.nn.Module, precision: str) -> None:
    """Trainable parameters in fp32 (master weights); frozen ones in bf16 under bf16 training, fp32 otherwise."""
    frozen = torch.bfloat16 if precision == "bf16" else torch.float32
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(torch.float32 if p.requires_grad else frozen)


def set_tf32(device: torch.device, enabled: bool) -> bool:
    """TF32 for fp32 matmuls and cuDNN convolutions (what the HF Trainer's `--tf32` sets) on a CUDA device of
    compute capability 8.0 or more; returns whether it is on. Elsewhere nothing changes."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled


def autocast(device: torch.device, precision: str, fsdp_on: bool) -> Any:
    """bf16 compute around fp32 master weights; FSDP's mixed-precision policy casts by itself."""
    if precision == "bf16" and not fsdp_on:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def build_optimizer(model: torch.nn.Module, rates: dict[str, float], betas: tuple[float, float],
                    weight_decay: float) -> torch.optim.Optimizer:  # fmt: skip
    groups = parameter_groups(model)
    return torch.optim.AdamW([{"params": groups[part], "lr": rates[part], "name": part} for part in PART_PREFIXES
                              if groups[part]], betas=betas, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """The warmup + cosine schedule of `cfg` (the `optim` section: warmup_ratio, max_steps, warmup_rounding)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lr_lambda(cfg.warmup_ratio, cfg.max_steps, cfg.warmup_rounding))


def warmup_steps(ratio: float, max_steps: int, rounding: str) -> int:
    """`ceil`: the paper's (Hugging Face Trainer's) count; `round`: rounded, at least one step."""
    if rounding == "ceil":
        return math.ceil(ratio * max_steps)
    return max(1, round(ratio * max_steps))


def lr_lambda(ratio: float, max_steps: int, rounding: str) -> Callable[[int], float]:
    """Linear warmup then cosine to 0, as a factor of each group's rate at optimizer step `step` (from 0).

    `ceil` is Hugging Face's `get_cosine_schedule_with_warmup` exactly: the factor is step / warmup, so the first
    update runs at 0. `round` starts one step ahead: (step + 1) / warmup.
    """
    warmup = warmup_steps(ratio, max_steps, rounding)
    ahead = 0 if rounding == "ceil" else 1

    def factor(step: int) -> float:
        if step < warmup:
            return (step + ahead) / max(1, warmup)
        progress = (step - warmup) / max(1, max_steps - warmup)
        return max(0.0, 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    return factor
