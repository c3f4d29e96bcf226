"""Checkpoints made of parts that save and load themselves, so what a run saves is by construction what it resumes.

A part is anything with `state_dict()` and `load_state_dict(state)`, as torch's optimizers and schedulers are:
the train state (`TrainState`), the optimizer (`OptimizerState`: the full state, also under FSDP), the scheduler,
the data position (the `DataStream`) and the random generators (`RandomState`). `save` stores each part under its
name in `state.pt`, `restore` hands each part its entry back. A part every rank holds its own of is wrapped in
`PerRank`: a list over ranks in the file, each rank loads its own. The model (`Weights`) is saved beside them as
the safetensors transformers loads (`save_pretrained`) and loads into the unsharded model before FSDP wraps it
(`trainer.prepare`). `state.pt` holds plain tensors and numbers, loaded with `torch.load(weights_only=True)`:
nothing in a checkpoint is executed.

Layout: `<run>/checkpoints/step-000100/` holding the model files, `state.pt` and `COMPLETE` (written last: a
directory without it is ignored and removed). A `state.pt` written before the parts (flat: `step`, `optimizer`,
`scheduler`, each data-position field and `rng` as lists over ranks) is read as the parts it holds.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from shards.ledger import fsync_dir
from train.distributed import barrier, gather
from train.topology import Topology

COMPLETE = "COMPLETE"
LAYOUT = 2  # state.pt: {"layout": 2, part name: its state}; without "layout": the flat state of layout 1
POSITION_FIELDS = ("epoch", "consumed", "pending", "next_worker")  # layout 1's data position, a list over ranks each


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class TrainState:
    """Optimizer steps taken."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


class RandomState:
    """This process's Python, NumPy and torch generators."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
            "torch": torch.get_rng_state(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate((3, tuple(state["python"]), state["python_pos"]))
        np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
        torch.set_rng_state(state["torch"])


class OptimizerState:
    """The optimizer's full state: under FSDP gathered from the shards on save (by parameter name), and each rank
    keeps its shard of it on load."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool = False):
        self.model, self.optimizer, self.sharded = model, optimizer, sharded

    def state_dict(self) -> dict[str, Any]:
        if not self.sharded:
            return self.optimizer.state_dict()
        from train import fsdp

        return fsdp.full_optimizer_state(self.model, self.optimizer)  # a collective: every rank takes part

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.sharded:
            self.optimizer.load_state_dict(state)
            return
        from train import fsdp

        fsdp.load_optimizer_state(self.model, self.optimizer, state)


@dataclass
class PerRank:
    """A part every rank holds its own of: saved as the list over ranks (a collective), loaded from this rank's."""

    part: Stateful
    topology: Topology

    def state_dict(self) -> list[Any]:
        return gather(self.part.state_dict(), self.topology.world)

    def load_state_dict(self, states: list[Any]) -> None:
        self.part.load_state_dict(states[self.topology.rank])


class Weights:
    """The model: its full weights (gathered to rank 0 when FSDP shards them), written with its config as the
    safetensors transformers loads; loaded into the unsharded model, every key matched (a tied lm_head may be
    absent)."""

    def __init__(self, model: Any, sharded: bool = False):
        self.model, self.sharded = model, sharded

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.sharded:
            return self.model.state_dict()
        from train import fsdp

        return fsdp.full_model_state(self.model)  # a collective: rank 0 gets the weights on CPU, the others none

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise ValueError(f"does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def write(self, folder: Path, weights: dict[str, torch.Tensor]) -> None:
        self.model.save_pretrained(folder, safe_serialization=True, state_dict=weights)


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [d for d in root.glob("step-*") if (d / COMPLETE).exists()]
    return sorted(done, key=lambda d: int(d.name.split("-")[1]))


def latest(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save(run_dir: str | Path, step: int, weights: Weights, parts: dict[str, Stateful], tokenizer: Any, keep: int,
         topology: Topology) -> None:  # fmt: skip
    """Every rank calls it (gathering sharded weights and per-rank parts are collectives); rank 0 writes
    `step`'s checkpoint and keeps the last `keep`."""
    model_state = weights.state_dict()
    state = {"layout": LAYOUT, **{name: part.state_dict() for name, part in parts.items()}}
    if topology.rank == 0:
        _write(Path(run_dir), step, weights, model_state, tokenizer, state, keep)
    barrier(topology.world)


def _write(run_dir: Path, step: int, weights: Weights, model_state: dict[str, torch.Tensor], tokenizer: Any,
           state: dict[str, Any], keep: int) -> Path:  # fmt: skip
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights.write(tmp, model_state)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "state.pt")
    (tmp / COMPLETE).write_text(str(step))
    _fsync_tree(tmp)  # every file on disk before the rename makes the checkpoint the latest
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_dir(root)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for sub_dir in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(sub_dir)


def restore(ckpt: Path, parts: dict[str, Stateful]) -> None:
    """Each part's state from `ckpt`, in the order of `parts`."""
    state = load_state(ckpt)
    for name, part in parts.items():
        part.load_state_dict(state[name])


def load_state(ckpt: Path) -> dict[str, Any]:
    """`state.pt` by part name, whichever layout wrote it."""
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    return state if "layout" in state else _parts_of_flat(state)


def _parts_of_flat(state: dict[str, Any]) -> dict[str, Any]:
    """Layout 1: `step`, `optimizer`, `scheduler`, and per rank (lists over ranks) `rng` and each position field."""
    ranks = range(len(state["rng"]))
    data = [{name: state[name][rank] for name in POSITION_FIELDS if name in state} for rank in ranks]
    return {"layout": 1, "train": {"step": state["step"]}, "optimizer": state["optimizer"],
            "scheduler": state["scheduler"], "data": data, "rng": state["rng"]}  # fmt: skip


def load_weights(model: Any, ckpt: str | Path) -> None:
    """Model weights only (a stage starting from the previous stage, or a resumed run before sharding): a
    checkpoint dir or a run dir (its latest checkpoint)."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    if not (ckpt / "model.safetensors").exists():
        found = latest(ckpt)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt}")
        ckpt = found
    try:
        Weights(model).load_state_dict(load_file(str(ckpt / "model.safetensors")))
    except ValueError as e:
        raise ValueError(f"checkpoint {ckpt} {e}") from None
