"""Where this process stands in a training run, decided once from the config and the launch, then passed down.

A `Topology` holds the ranks, the sequence-parallel groups (`parallel.sp_size` consecutive ranks split each
sequence and read one batch together, as one data reader), whether FSDP shards the model (`parallel.sharding:
fsdp` over more than one rank; one rank is always a plain model) and the micro-batches each rank accumulates per
optimizer step (`optim.global_batch_size` over the data readers x `data.batch_size`, or `optim.grad_accum`).
The CLI checks it before launching and plans with it (`--dry-run`); the trainer, the loader and the checkpoint
take it instead of working any of it out again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipeline.core.config_load import ConfigError


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world: int = 1
    sp: int = 1  # ranks per sequence-parallel group
    fsdp: bool = False  # FSDP2 over every rank; False with more than one rank: DDP
    accum: int = 1  # micro-batches per optimizer step on each rank

    @classmethod
    def from_config(cls, cfg: Any, world: int, rank: int = 0) -> Topology:
        """`cfg`'s topology on `world` ranks as `rank`; ConfigError names the setting that does not fit."""
        sp = cfg.parallel.sp_size
        if world % sp:
            raise ConfigError(f"parallel.sp_size {sp} does not divide the {world} ranks")
        return cls(rank, world, sp, cfg.parallel.sharding == "fsdp" and world > 1, accumulation(cfg, world // sp))

    @classmethod
    def launched(cls, cfg: Any, ranks: int = 1) -> Topology:
        """This process's: torchrun's RANK and WORLD_SIZE, or else `ranks` ranks (those the CLI is about to launch)."""
        return cls.from_config(cfg, int(os.environ.get("WORLD_SIZE") or ranks), int(os.environ.get("RANK", "0")))

    @property
    def readers(self) -> int:
        """Ranks that read different data: one a sequence-parallel group."""
        return self.world // self.sp

    @property
    def reader(self) -> int:
        """The reader this rank reads as: its group's."""
        return self.rank // self.sp

    @property
    def reader_ranks(self) -> range:
        """The first rank of each group: its items are the group's, counted once."""
        return range(0, self.world, self.sp)

    @property
    def ddp(self) -> bool:
        return self.world > 1 and not self.fsdp

    @property
    def sharding(self) -> str:
        return "fsdp" if self.fsdp else "ddp"


def accumulation(cfg: Any, readers: int) -> int:
    """Micro-batches per optimizer step on each rank, from the global batch when one is set."""
    optim = cfg.optim
    if optim.global_batch_size is None:
        return optim.grad_accum or 1
    per_micro = readers * cfg.data.batch_size
    if optim.global_batch_size % per_micro:
        raise ConfigError(f"optim.global_batch_size {optim.global_batch_size} is not a multiple of "
                          f"{readers} data ranks x data.batch_size {cfg.data.batch_size}")  # fmt: skip
    return optim.global_batch_size // per_micro
