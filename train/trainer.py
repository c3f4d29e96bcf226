"""The staged trainer: one process or many (torchrun), DDP by default or FSDP2 (`parallel.sharding: fsdp`), with
sequence parallelism (`parallel.sp_size`, `train/sequence.py`) in either, resume by default.

`Trainer` reads top to bottom: `setup` (process group, model, what trains and in which precision, the parallel
wrapper, optimizer and schedule, the data stream, the checkpoint's parts), `resume` (the latest checkpoint's
state), `train_step` (one optimizer step), `save` and `fit` (the loop); `train(cfg)` runs them all. Ranks,
sequence-parallel groups, sharding and accumulation come from the run's `Topology` (`train/topology.py`), decided
once; what the model decides (its tokens a frame) is read from the model and handed to the loader.

A step takes the micro-batches of one global batch (`optim.global_batch_size` over data readers x
`data.batch_size`; gradients synchronised only on the last one), averages the loss per sample (the
paper) or per supervised token (`train/loss.py`), clips, steps AdamW over fp32 master weights (learning rate per
part, 0 = frozen; bf16 compute, see `train/optim.py`) under a warmup + cosine schedule, and logs loss,
learning rate, tokens/s, data-wait, step time and the ids of the items trained to `<output.dir>/log.jsonl`. When the
output dir holds a checkpoint, training resumes from it exactly: weights, optimizer, scheduler, step, RNG and data
position (`DataPosition`: epoch, items consumed and the items still waiting in batch buckets, see
`train/batching.py`; with or without loader workers), each a part that saves and loads itself
(`train/checkpoint.py`). A new stage starts from the previous one's weights with `model.init_from`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config_load import ConfigError, write_resolved_config
from train import checkpoint, fsdp, optim, packing, sequence
from train.batching import DataStream
from train.chat import IGNORE, ChatEncoder
from train.checkpoint import OptimizerState, PerRank, RandomState, TrainState, Weights
from train.config import TrainConfig
from train.console import Console
from train.distributed import all_reduce_sum, gather, setup_distributed
from train.loss import count_units, next_tokens, summed_loss, target_loss
from train.model import VideoLlava, tokens_per_frame
from train.packing import model_inputs, segments, token_count
from train.topology import Topology

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
    """One training run: `run()` is `setup()`, `resume()`, then `fit()`. `topology`: this process's place in the
    run (default: torchrun's RANK and WORLD_SIZE, one rank without them)."""

    def __init__(self, cfg: TrainConfig, topology: Topology | None = None):
        self.cfg = cfg
        self.topology = topology or Topology.launched(cfg)
        self.run_dir = Path(cfg.output.dir)
        self.state = TrainState()
        self.history: list[dict[str, Any]] = []
        self._batches: Any = None

    @property
    def step(self) -> int:
        return self.state.step

    def setup(self) -> None:
        """Process group, model (with any checkpoint's weights), parallel wrapper, optimizer, schedule, data stream,
        and the parts a checkpoint saves and resumes."""
        cfg, topo = self.cfg, self.topology
        self.device = setup_distributed(topo.world)
        self.tf32 = optim.set_tf32(self.device, cfg.optim.tf32)
        torch.manual_seed(cfg.seed + topo.rank)
        self.tokenizer, model = load_parts(cfg)
        per_frame = tokens_per_frame(model.config)  # the model's, handed to the loader
        if cfg.model.activation_checkpointing and not cfg.model.tiny:
            model.gradient_checkpointing_enable()
        self.checkpoint = checkpoint.latest(self.run_dir)  # resume from it
        prepare(cfg, model, self.checkpoint)
        model.to(self.device).train()
        # A group of sp consecutive ranks reads one batch and splits its sequences.
        self.group = sequence.new_group(topo.rank, topo.world, topo.sp) if topo.sp > 1 else None
        if self.group is not None:
            sequence.enable(model, self.group)
        if cfg.data.packing:
            packing.enable(model)
        if topo.fsdp:
            model = fsdp.shard(model, topo.world, self.device, bf16=cfg.optim.precision == "bf16")
        self.model = model
        self.optimizer = optim.build_optimizer(model, cfg.optim.lr.model_dump(), cfg.optim.betas, cfg.optim.weight_decay)
        self.scheduler = optim.build_scheduler(self.optimizer, cfg.optim)
        if topo.rank == 0:
            write_resolved_config(cfg, self.run_dir, "train.resolved.yaml")
        self.wrapped = torch.nn.parallel.DistributedDataParallel(model) if topo.ddp else model
        encoder = ChatEncoder(self.tokenizer, video_token=cfg.model.video_token, mask=cfg.data.mask,
                              image_placement=cfg.data.image_placement)  # fmt: skip
        self.stream = DataStream(cfg, encoder, self.tokenizer.pad_token_id, tokens_per_frame=per_frame, topology=topo)
        self.autocast = optim.autocast(self.device, cfg.optim.precision, topo.fsdp)
        self.weights = Weights(model, topo.fsdp)
        self.parts = {"train": self.state, "optimizer": OptimizerState(model, self.optimizer, topo.fsdp),
                      "scheduler": self.scheduler, "data": PerRank(self.stream, topo),
                      "rng": PerRank(RandomState(), topo)}  # fmt: skip

    def resume(self) -> None:
        """The latest checkpoint's parts: step, optimizer, schedule, this rank's data position and RNG (the weights
        were loaded before sharding, in `setup`)."""
        if self.checkpoint is None:
            return
        checkpoint.restore(self.checkpoint, self.parts)
        log.info("resumed from %s at step %d", self.checkpoint, self.step)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over the micro-batches of one global batch; returns its log record."""
        topo, device, average = self.topology, self.device, self.cfg.optim.loss_average
        world, sp, accum = topo.world, topo.sp, topo.accum
        if self._batches is None:
            self._batches = self.stream.batches()
        start, tokens, total = time.perf_counter(), 0, 0.0
        t0 = time.perf_counter()
        micro_batches = [next(self._batches) for _ in range(accum)]
        ids = [i for b in micro_batches for i in b.pop("ids")]
        if self.group is not None:
            micro_batches = [sequence.pad_batch(b, sp, self.tokenizer.pad_token_id) for b in micro_batches]
        micro_batches = [{k: v.to(device) for k, v in b.items()} for b in micro_batches]
        wait = time.perf_counter() - t0
        # The loss is the mean over every unit (sample or supervised token) of the step, across micro-batches and
        # ranks, so N ranks x batch b gives the same update as one rank with batch N x b (DDP averages gradients).
        # A sequence-parallel group holds one batch: its units are counted once, each rank sums its slice's loss.
        units = float(sum(count_units(b["labels"], average, segments(b)) for b in micro_batches))
        denominator = max(all_reduce_sum(units, device, world) / sp, 1.0)
        for micro, batch in enumerate(micro_batches):
            sync = micro == accum - 1 or world == 1
            if topo.fsdp:
                fsdp.set_gradient_sync(self.model, sync)
            no_sync = contextlib.nullcontext() if sync or topo.fsdp else self.wrapped.no_sync()
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
        self.state.step += 1
        total = all_reduce_sum(total, device, world)  # per-rank shares of the global mean add up to it
        elapsed = time.perf_counter() - start
        tokens = tokens * world // sp  # a sequence-parallel group's ranks hold the same batch
        every_rank = gather((ids, dict(self.stream.passed_over)), world)
        readers = [every_rank[rank][0] for rank in topo.reader_ranks]
        passed: Counter = sum((Counter(every_rank[rank][1]) for rank in topo.reader_ranks), Counter())
        return {"step": self.step, "loss": round(total, 6), "lr": self.scheduler.get_last_lr()[-1],
                "grad_norm": float(norm), "tokens_per_s": round(tokens / elapsed, 1), "data_wait_s": round(wait, 4),
                "step_s": round(elapsed, 4), "epoch": self.stream.epoch, "tokens": tokens,
                "items": [i for rank_ids in readers for i in rank_ids],
                "passed_over": dict(sorted(passed.items()))}  # fmt: skip

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:
        """The micro-batch's summed loss (`train/loss.py`); with sequence parallelism, over this rank's slice;
        `packed`: which item each position of a packed batch belongs to."""
        average = self.cfg.optim.loss_average
        if self.group is None:
            return summed_loss(logits, labels, average, packed)
        mine = sequence.local_slice(labels.shape[1], self.group)
        return target_loss(logits, next_tokens(labels)[:, mine], (labels[:, 1:] != IGNORE).sum(dim=1), average)

    def save(self) -> None:
        """A checkpoint of this step: the full weights and every part (every rank takes part, rank 0 writes)."""
        checkpoint.save(self.run_dir, self.step, self.weights, self.parts, self.tokenizer, self.cfg.output.keep,
                        self.topology)  # fmt: skip

    def fit(self) -> dict[str, Any]:
        """Steps until `optim.max_steps`, logging and saving as configured; the run's steps, history and summary."""
        cfg = self.cfg
        max_steps = cfg.optim.max_steps
        first = self.topology.rank == 0
        logf = open(self.run_dir / "log.jsonl", "a") if first else None
        console = Console(max_steps, self.step, enabled=first and cfg.output.console)
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
        if cfg.eval is not None and last is not None and first:
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


def train(cfg: TrainConfig, topology: Topology | None = None) -> dict[str, Any]:
    """Train `cfg` to `optim.max_steps` (resuming from the output dir's latest checkpoint): steps, history, summary."""
    return Trainer(cfg, topology).run()
