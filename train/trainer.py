"""The staged trainer: one process or many (torchrun), DDP by default or FSDP2 (`parallel: fsdp`), resume by default.

A step takes the micro-batches of one global batch (`optim.global_batch_size` over ranks x
`data.batch_size`; gradients synchronised only on the last one), averages the loss per sample (the
paper) or per supervised token, clips, steps AdamW over fp32 master weights (learning rate per part,
0 = frozen; bf16 compute, see `train/optim.py`) under a warmup + cosine schedule, and logs loss,
learning rate, tokens/s, data-wait, step time and the ids of the items trained to `<output.dir>/log.jsonl`. When the output dir holds a
checkpoint, training resumes from it exactly: weights, optimizer, scheduler, step, RNG and data
position (epoch, items consumed and the items still waiting in batch buckets, see `train/batching.py`;
with or without loader workers). A new stage starts from the
previous one's weights with `model.init_from`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.config_load import write_resolved_config
from train import checkpoint, fsdp, optim
from train.batching import DataStream
from train.chat import IGNORE, ChatEncoder
from train.config import TrainConfig
from train.console import Console
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


def load_parts(cfg: TrainConfig) -> tuple[Any, Any]:
    """Tokenizer and model as stored (the checkpoint's own dtype); `prepare` sets what trains and its precision."""
    from fixtures.tiny_train_model import build_model, build_tokenizer

    if cfg.model.tiny:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, pool=cfg.model.video_pool_size, seed=cfg.seed)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer or cfg.model.path)
        model = VideoLlava.from_pretrained(cfg.model.path, dtype="auto")
        model.config.video_pool_size = cfg.model.video_pool_size
    return tokenizer, model


def prepare(cfg: TrainConfig, model: VideoLlava, resume: Path | None) -> None:
    """Freeze the parts with no learning rate, set fp32 master weights, then load earlier weights into them."""
    optim.freeze(model, cfg.optim.lr.model_dump())
    optim.set_precision(model, cfg.optim.precision)
    if cfg.model.init_from:
        checkpoint.load_weights(model, cfg.model.init_from)
    if resume is not None:
        checkpoint.load_weights(model, resume)  # full weights on every rank, before any sharding


def count_units(labels: torch.Tensor, average: str) -> int:
    """What the loss averages over in a micro-batch: supervised tokens, or samples with any supervised token."""
    supervised = labels[:, 1:] != IGNORE
    return int(supervised.sum()) if average == "token" else int(supervised.any(dim=1).sum())


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, average: str = "token") -> torch.Tensor:
    """Next-token cross-entropy summed over units (the caller divides by the step's global unit count).

    token: the sum over supervised tokens; sample: the sum over samples of each sample's mean token loss.
    """
    target = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                  target.reshape(-1), ignore_index=IGNORE,
                                                  reduction="none").view(target.shape)  # fmt: skip
    if average == "token":
        return per_token.sum()
    counts = (target != IGNORE).sum(dim=1)
    return (per_token.sum(dim=1)[counts > 0] / counts[counts > 0]).sum()


def train(cfg: TrainConfig) -> dict[str, Any]:
    rank, world, device = setup_distributed()
    run_dir = Path(cfg.output.dir)
    accum = cfg.grad_accum(world)
    torch.manual_seed(cfg.seed + rank)
    tokenizer, model = load_parts(cfg)
    # One data seed on every rank: the ranks split one permutation (order: permutation) or one shard list.
    data_cfg = cfg.data.model_copy(update={"tokens_per_frame": tokens_per_frame(model.config), "seed": cfg.seed})
    cfg = cfg.model_copy(update={"data": data_cfg})
    if cfg.model.activation_checkpointing and not cfg.model.tiny:
        model.gradient_checkpointing_enable()
    fsdp_on = cfg.parallel == "fsdp" and world > 1
    resume = checkpoint.latest(run_dir)
    prepare(cfg, model, resume)
    model.to(device).train()
    if fsdp_on:
        model = fsdp.shard(model, world, device, bf16=cfg.optim.precision == "bf16")
    rates = cfg.optim.lr.model_dump()
    optimizer = optim.build_optimizer(model, rates, cfg.optim.betas, cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, optim.lr_lambda(cfg.optim.warmup_ratio, cfg.optim.max_steps, cfg.optim.warmup_rounding))
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
    encoder = ChatEncoder(tokenizer, image_token=cfg.model.video_token, mask=cfg.data.mask,
                          image_placement=cfg.data.image_placement)
    stream = DataStream(cfg, encoder, tokenizer.pad_token_id, epoch, consumed, pending, next_worker)
    batches = stream.batches()
    autocast = optim.autocast(device, cfg.optim.precision, fsdp_on)
    average = cfg.optim.loss_average
    history = []
    logf = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    console = Console(cfg.optim.max_steps, step, enabled=rank == 0 and cfg.output.console)
    while step < cfg.optim.max_steps:
        start, tokens, total = time.perf_counter(), 0, 0.0
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(accum)]
        ids = [i for b in micro_batches for i in b.pop("ids")]
        micro_batches = [{k: v.to(device) for k, v in b.items()} for b in micro_batches]
        wait = time.perf_counter() - t0
        # The loss is the mean over every unit (sample or supervised token) of the step, across micro-batches and
        # ranks, so N ranks x batch b gives the same update as one rank with batch N x b (DDP averages gradients).
        units = torch.tensor([float(sum(count_units(b["labels"], average) for b in micro_batches))], device=device)
        if world > 1:
            torch.distributed.all_reduce(units)
        denominator = max(float(units.item()), 1.0)
        for micro, batch in enumerate(micro_batches):
            sync = micro == accum - 1 or world == 1
            if fsdp_on:
                fsdp.set_gradient_sync(model, sync)
            no_sync = contextlib.nullcontext() if sync or fsdp_on else wrapped.no_sync()
            with no_sync, autocast:
                unit_sum = summed_loss(wrapped(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                       batch["labels"], average)  # fmt: skip
            (unit_sum * (world / denominator)).backward()
            total += unit_sum.item() / denominator
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if world > 1:
            t = torch.tensor([total], device=device)
            torch.distributed.all_reduce(t)  # per-rank shares of the global mean add up to it
            total = t.item()
        elapsed = time.perf_counter() - start
        record = {"step": step, "loss": round(total, 6), "lr": scheduler.get_last_lr()[-1],
                  "tokens_per_s": round(tokens * world / elapsed, 1), "data_wait_s": round(wait, 4),
                  "step_s": round(elapsed, 4), "epoch": stream.epoch, "tokens": tokens * world,
                  "items": [i for rank_ids in _gather(ids, world) for i in rank_ids]}  # fmt: skip
        history.append(record)
        logged = step % cfg.output.log_every == 0 or step == 1 or step == cfg.optim.max_steps
        if logf and logged:
            logf.write(json.dumps(record) + "\n")
            logf.flush()
        console.step(record, logged)
        if step % cfg.output.save_every == 0 or step == cfg.optim.max_steps:
            _save(cfg, run_dir, step, model, tokenizer, optimizer, scheduler, stream, rank, world)
    console.close()
    if logf:
        logf.close()
    last = checkpoint.latest(run_dir)
    final_loss = history[-1]["loss"] if history else None
    return {"steps": step, "history": history, "summary": console.summary(step, final_loss, str(last) if last else None)}


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
