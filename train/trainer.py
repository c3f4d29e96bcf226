"""The staged trainer: one process or many (torchrun), DDP by default or FSDP2 (`parallel.sharding: fsdp`), with
sequence parallelism (`parallel.sp_size`, `train/sequence.py`) in either, resume by default.

`Trainer` reads top to bottom: `setup` (process group, model, what trains and in which precision, the parallel
wrapper, optimizer and schedule, the data stream), `resume` (the latest checkpoint's state), `train_step` (one
optimizer step), `save` and `fit` (the loop); `train(cfg)` runs them all.

A step takes the micro-batches of one global batch (`optim.global_batch_size` over ranks x
`data.batch_size`; gradients synchronised only on the last one), averages the loss per sample (the
paper) or per supervised token (`train/loss.py`), clips, steps AdamW over fp32 master weights (learning rate per
part, 0 = frozen; bf16 compute, see `train/optim.py`) under a warmup + cosine schedule, and logs loss,
learning rate, tokens/s, data-wait, step time and the ids of the items trained to `<output.dir>/log.jsonl`. When the
output dir holds a checkpoint, training resumes from it exactly: weights, optimizer, scheduler, step, RNG and data
position (`DataPosition`: epoch, items consumed and the items still waiting in batch buckets, see
`train/batching.py`; with or without loader workers). A new stage starts from the previous one's weights with
`model.init_from`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config_load import ConfigError, write_resolved_config
from train import checkpoint, fsdp, optim, packing, sequence
from train.batching import DataStream
from train.chat import ChatEncoder
from train.config import TrainConfig
from train.console import Console
from train.distributed import all_reduce_sum, gather, setup_distributed
from train.chat import IGNORE
from train.loss import count_units, next_tokens, summed_loss, target_loss
from train.packing import model_inputs, segments, token_count
from train.model import VideoLlava, tokens_per_frame
from train.position import DataPosition

log = logging.getLogger(__name__)


def load_parts(cfg: TrainConfig) -> tuple[Any, Any]:
    """Tokenizer and model as stored (the checkpoint's own dtype); `prepare` sets what trains and its precision."""
    if cfg.model.tiny:
        try:  # the tiny random model is a fixture: in a checkout, not in the installed wheel
            from fixtures.tiny_train_model import build_model, build_tokenizer
        except ModuleNotFoundError as e:
            if e.name != "fixtures":
                raise
            raise ConfigError("model.tiny: the tiny random model (fixtures/) comes with a checkout of the "
                              "repository, not with the installed package; set model.path") from None
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


class Trainer:
    """One training run: `run()` is `setup()`, `resume()`, then `fit()`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.output.dir)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._batches: Any = None

    def setup(self) -> None:
        """Process group, model (with any checkpoint's weights), parallel wrapper, optimizer, schedule, data stream."""
        cfg = self.cfg
        self.rank, self.world, self.device = setup_distributed()
        self.accum = cfg.grad_accum(self.world)
        self.sp = cfg.parallel.sp_size  # a group of sp consecutive ranks reads one batch and splits its sequences
        torch.manual_seed(cfg.seed + self.rank)
        self.tokenizer, model = load_parts(cfg)
        # One data seed on every rank: the ranks split one permutation (order: permutation) or one shard list.
        update = {"tokens_per_frame": tokens_per_frame(model.config), "seed": cfg.seed}
        if self.sp > 1:
            update["reader"] = (self.rank // self.sp, cfg.parallel.data_ranks(self.world))
        data_cfg = cfg.data.model_copy(update=update)
        self.cfg = cfg = cfg.model_copy(update={"data": data_cfg})
        if cfg.model.activation_checkpointing and not cfg.model.tiny:
            model.gradient_checkpointing_enable()
        self.fsdp_on = cfg.parallel.sharding == "fsdp" and self.world > 1
        self.checkpoint = checkpoint.latest(self.run_dir)  # resume from it
        prepare(cfg, model, self.checkpoint)
        model.to(self.device).train()
        self.group = sequence.new_group(self.rank, self.world, self.sp) if self.sp > 1 else None
        if self.group is not None:
            sequence.enable(model, self.group)
        if cfg.data.packing:
            packing.enable(model)
        if self.fsdp_on:
            model = fsdp.shard(model, self.world, self.device, bf16=cfg.optim.precision == "bf16")
        self.model = model
        self.optimizer = optim.build_optimizer(model, cfg.optim.lr.model_dump(), cfg.optim.betas, cfg.optim.weight_decay)
        self.scheduler = optim.build_scheduler(self.optimizer, cfg.optim)
        if self.rank == 0:
            write_resolved_config(cfg, self.run_dir, "train.resolved.yaml")
        ddp = self.world > 1 and not self.fsdp_on
        self.wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
        encoder = ChatEncoder(self.tokenizer, video_token=cfg.model.video_token, mask=cfg.data.mask,
                              image_placement=cfg.data.image_placement)  # fmt: skip
        self.stream = DataStream(cfg, encoder, self.tokenizer.pad_token_id)
        self.autocast = optim.autocast(self.device, cfg.optim.precision, self.fsdp_on)

    def resume(self) -> None:
        """The latest checkpoint's optimizer, schedule, step, this rank's data position and RNG (weights: `setup`)."""
        if self.checkpoint is None:
            return
        state = checkpoint.load_state(self.checkpoint)
        if self.fsdp_on:
            fsdp.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.stream.restore(DataPosition.from_state(state, self.rank))
        checkpoint.set_rng_state(state["rng"][self.rank])
        log.info("resumed from %s at step %d", self.checkpoint, self.step)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over the micro-batches of one global batch; returns its log record."""
        world, device, average = self.world, self.device, self.cfg.optim.loss_average
        if self._batches is None:
            self._batches = self.stream.batches()
        start, tokens, total = time.perf_counter(), 0, 0.0
        t0 = time.perf_counter()
        micro_batches = [next(self._batches) for _ in range(self.accum)]
        ids = [i for b in micro_batches for i in b.pop("ids")]
        if self.group is not None:
            micro_batches = [sequence.pad_batch(b, self.sp, self.tokenizer.pad_token_id) for b in micro_batches]
        micro_batches = [{k: v.to(device) for k, v in b.items()} for b in micro_batches]
        wait = time.perf_counter() - t0
        # The loss is the mean over every unit (sample or supervised token) of the step, across micro-batches and
        # ranks, so N ranks x batch b gives the same update as one rank with batch N x b (DDP averages gradients).
        # A sequence-parallel group holds one batch: its units are counted once, each rank sums its slice's loss.
        units = float(sum(count_units(b["labels"], average, segments(b)) for b in micro_batches))
        denominator = max(all_reduce_sum(units, device, world) / self.sp, 1.0)
        for micro, batch in enumerate(micro_batches):
            sync = micro == self.accum - 1 or world == 1
            if self.fsdp_on:
                fsdp.set_gradient_sync(self.model, sync)
            no_sync = contextlib.nullcontext() if sync or self.fsdp_on else self.wrapped.no_sync()
            with no_sync, self.autocast:
                unit_sum = self.loss(self.wrapped(**model_inputs(batch)).logits, batch["labels"], segments(batch))
            (unit_sum * (world / denominator)).backward()
            total += unit_sum.item() / denominator
            tokens += token_count(batch)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trainable, self.cfg.optim.max_grad_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        total = all_reduce_sum(total, device, world)  # per-rank shares of the global mean add up to it
        elapsed = time.perf_counter() - start
        tokens = tokens * world // self.sp  # a sequence-parallel group's ranks hold the same batch
        readers = [rank_ids for rank, rank_ids in enumerate(gather(ids, world)) if rank % self.sp == 0]
        return {"step": self.step, "loss": round(total, 6), "lr": self.scheduler.get_last_lr()[-1],
                "grad_norm": float(norm), "tokens_per_s": round(tokens / elapsed, 1), "data_wait_s": round(wait, 4),
                "step_s": round(elapsed, 4), "epoch": self.stream.epoch, "tokens": tokens,
                "items": [i for rank_ids in readers for i in rank_ids]}  # fmt: skip

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:
        """The micro-batch's summed loss (`train/loss.py`); with sequence parallelism, over this rank's slice;
        `packed`: which item each position of a packed batch belongs to."""
        average = self.cfg.optim.loss_average
        if self.group is None:
            return summed_loss(logits, labels, average, packed)
        mine = sequence.local_slice(labels.shape[1], self.group)
        return target_loss(logits, next_tokens(labels)[:, mine], (labels[:, 1:] != IGNORE).sum(dim=1), average)

    def save(self) -> None:
        """A checkpoint of this step: full weights, optimizer, schedule, and every rank's data position and RNG."""
        sharded = self.fsdp_on
        weights = fsdp.full_model_state(self.model) if sharded else None  # collectives: every rank takes part
        optim_state = fsdp.full_optimizer_state(self.model, self.optimizer) if sharded else self.optimizer.state_dict()
        state = {
            "step": self.step, "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
            **{name: gather(value, self.world) for name, value in self.stream.state().items()},  # per rank
            "rng": gather(checkpoint.rng_state(), self.world),
        }  # fmt: skip
        if self.rank == 0:
            checkpoint.save(self.run_dir, self.step, self.model, self.tokenizer, state, self.cfg.output.keep, weights)
        if self.world > 1:
            torch.distributed.barrier()

    def fit(self) -> dict[str, Any]:
        """Steps until `optim.max_steps`, logging and saving as configured; the run's steps, history and summary."""
        cfg = self.cfg
        max_steps = cfg.optim.max_steps
        logf = open(self.run_dir / "log.jsonl", "a") if self.rank == 0 else None
        console = Console(max_steps, self.step, enabled=self.rank == 0 and cfg.output.console)
        while self.step < max_steps:
            record = self.train_step()
            self.history.append(record)
            logged = self.step % cfg.output.log_every == 0 or self.step == 1 or self.step == max_steps
            if logf and logged:
                logf.write(json.dumps(record) + "\n")
                logf.flush()
            console.step(record, logged)
            if self.step % cfg.output.save_every == 0 or self.step == max_steps:
                self.save()
        console.close()
        if logf:
            logf.close()
        last = checkpoint.latest(self.run_dir)
        final_loss = self.history[-1]["loss"] if self.history else None
        summary = console.summary(self.step, final_loss, str(last) if last else None)
        if cfg.eval is not None and last is not None and self.rank == 0:
            summary += "\n" + self.evaluate(last)
        return {"steps": self.step, "history": self.history, "summary": summary}

    def evaluate(self, ckpt: Path) -> str:
        """The stage's accuracy on `eval.bench` (`prolongvid eval`), written beside its last checkpoint."""
        from evaluation.cli import evaluate
        from evaluation.report import summary_table

        e = self.cfg.eval
        assert e is not None
        result = evaluate(str(ckpt), e.bench, ckpt / "eval", e.frames or self.cfg.data.frames, e.video_root, e.split,
                          e.limit, e.batch_size, progress=self.cfg.output.console)  # fmt: skip
        return summary_table(result)

    def run(self) -> dict[str, Any]:
        self.setup()
        self.resume()
        return self.fit()


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg` to `optim.max_steps` (resuming from the output dir's latest checkpoint): steps, history, summary."""
    return Trainer(cfg).run()
