"""The staged trainer: one process or many (torchrun), DDP by default or FSDP2 (`parallel: fsdp`), resume by default.

A step takes `grad_accum` micro-batches (gradients synchronised only on the last one), clips, steps
AdamW (learning rate per part, 0 = frozen) under a warmup + cosine schedule, and logs loss, learning
rate, tokens/s, data-wait and step time to `<output.dir>/log.jsonl`. When the output dir holds a
checkpoint, training resumes from it exactly: weights, optimizer, scheduler, step, RNG and data
position (epoch, items consumed and the items still waiting in batch buckets, see `train/batching.py`;
with or without loader workers). A new stage starts from the
previous one's weights with `model.init_from`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config import write_resolved_config
from train import checkpoint, fsdp
from train.batching import DataStream
from train.chat import IGNORE, ChatEncoder
from train.config import TrainConfig
from train.model import VideoLlava, tokens_per_frame

log = logging.getLogger(__name__)


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def load_parts(cfg: TrainConfig, run_dir: Path) -> tuple[Any, Any]:
    from train.tiny import build_model, build_tokenizer

    if cfg.model.tiny:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, pool=cfg.model.video_pool_size, seed=cfg.seed)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or cfg.model.path)
        model = VideoLlava.from_pretrained(cfg.model.path)
        model.config.video_pool_size = cfg.model.video_pool_size
    if cfg.model.init_from:
        checkpoint.load_weights(model, cfg.model.init_from)
    return tokenizer, model


def lr_lambda(cfg: TrainConfig):
    warmup = max(1, round(cfg.optim.warmup_ratio * cfg.optim.max_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.optim.max_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(cfg: TrainConfig, model: VideoLlava) -> torch.optim.Optimizer:
    rates = cfg.optim.lr.model_dump()
    for part, rate in rates.items():
        if rate == 0:
            prefix = {"vision_tower": "vision_tower", "projector": "multi_modal_projector"}.get(part)
            for name, p in model.named_parameters():
                if (prefix and prefix in name) or (part == "language_model" and ("language_model" in name or "lm_head" in name)):
                    p.requires_grad_(False)
    groups = [{"params": ps, "lr": rates[part], "name": part} for part, ps in model.parameter_groups().items() if ps]
    return torch.optim.AdamW(groups, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy summed over supervised tokens (the caller divides by the global count)."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(shift_logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE,
                                             reduction="sum")


def train(cfg: TrainConfig) -> dict[str, Any]:
    rank, world, device = setup_distributed()
    run_dir = Path(cfg.output.dir)
    torch.manual_seed(cfg.seed + rank)
    tokenizer, model = load_parts(cfg, run_dir)
    data_cfg = cfg.data.model_copy(update={"tokens_per_frame": tokens_per_frame(model.config), "seed": cfg.seed + rank})
    cfg = cfg.model_copy(update={"data": data_cfg})
    if cfg.model.activation_checkpointing and not cfg.model.tiny:
        model.gradient_checkpointing_enable()
    fsdp_on = cfg.parallel == "fsdp" and world > 1
    resume = checkpoint.latest(run_dir)
    if resume is not None:
        checkpoint.load_weights(model, resume)  # full weights on every rank, before any sharding
    model.to(device).train()
    if fsdp_on:
        model = fsdp.shard(model, world, device, bf16=cfg.optim.precision == "bf16")
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    step, epoch, consumed, pending, next_worker = 0, 0, 0, [], 0
    if resume is not None:
        state = checkpoint.load_state(resume)
        if fsdp_on:
            fsdp.load_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, consumed = state["step"], state["epoch"][rank], state["consumed"][rank]
        pending, next_worker = state["pending"][rank], state["next_worker"][rank]
        checkpoint.set_rng_state(state["rng"][rank])
        log.info("resumed from %s at step %d", resume, step)
    if rank == 0:
        write_resolved_config(cfg, run_dir, "train.resolved.yaml")
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 and not fsdp_on else model
    stream = DataStream(cfg, ChatEncoder(tokenizer, image_token=cfg.model.video_token), tokenizer.pad_token_id, epoch,
                        consumed, pending, next_worker)
    batches = stream.batches()
    bf16_autocast = cfg.optim.precision == "bf16" and not fsdp_on  # FSDP's policy casts to bf16 itself
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16_autocast else contextlib.nullcontext()
    history = []
    logf = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    while step < cfg.optim.max_steps:
        start, tokens, total = time.perf_counter(), 0, 0.0
        t0 = time.perf_counter()
        micro_batches = [{k: v.to(device) for k, v in next(batches).items()} for _ in range(cfg.optim.grad_accum)]
        wait = time.perf_counter() - t0
        # The loss is the mean over every supervised token of the step, across micro-batches and ranks, so
        # N ranks x batch b gives the same update as one rank with batch N x b (DDP then averages gradients).
        supervised = torch.tensor([float(sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro_batches))], device=device)
        if world > 1:
            torch.distributed.all_reduce(supervised)
        scale = world / max(float(supervised.item()), 1.0)
        for micro, batch in enumerate(micro_batches):
            sync = micro == cfg.optim.grad_accum - 1 or world == 1
            if fsdp_on:
                fsdp.set_gradient_sync(model, sync)
            no_sync = contextlib.nullcontext() if sync or fsdp_on else wrapped.no_sync()
            with no_sync, autocast:
                token_sum = summed_loss(wrapped(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
            (token_sum * scale).backward()
            total += token_sum.item() / max(float(supervised.item()), 1.0)
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if world > 1:
            t = torch.tensor([total], device=device)
            torch.distributed.all_reduce(t)  # per-rank shares of the global token mean add up to it
            total = t.item()
        elapsed = time.perf_counter() - start
        record = {"step": step, "loss": round(total, 6), "lr": scheduler.get_last_lr()[-1], "tokens_per_s": round(tokens * world / elapsed, 1),
                  "data_wait_s": round(wait, 4), "step_s": round(elapsed, 4), "epoch": stream.epoch}
        history.append(record)
        if logf and (step % cfg.output.log_every == 0 or step == 1 or step == cfg.optim.max_steps):
            logf.write(json.dumps(record) + "\n")
            logf.flush()
        if step % cfg.output.save_every == 0 or step == cfg.optim.max_steps:
            _save(cfg, run_dir, step, model, tokenizer, optimizer, scheduler, stream, rank, world)
    if logf:
        logf.close()
    return {"steps": step, "history": history}


def _gather(value: Any, world: int) -> list[Any]:
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def _save(cfg, run_dir, step, model, tokenizer, optimizer, scheduler, stream, rank, world) -> None:
    sharded = cfg.parallel == "fsdp" and world > 1
    weights = fsdp.full_model_state(model) if sharded else None  # collectives: every rank takes part
    optim_state = fsdp.full_optimizer_state(model, optimizer) if sharded else optimizer.state_dict()
    state = {
        "step": step, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
        **{name: _gather(value, world) for name, value in stream.state().items()},  # each rank's data position
        "rng": _gather(checkpoint.rng_state(), world),
    }
    if rank == 0:
        checkpoint.save(run_dir, step, model, tokenizer, state, cfg.output.keep, weights)
    if world > 1:
        torch.distributed.barrier()
