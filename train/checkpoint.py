"""Checkpoints: weights as safetensors (`save_pretrained`, loadable by transformers), training state as
plain tensors and numbers loaded with `torch.load(weights_only=True)`. Nothing in a checkpoint is executed.

Layout: `<run>/checkpoints/step-000100/` holding the model files, `state.pt` and `COMPLETE` (written
last: a directory without it is ignored and removed).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.ledger import fsync_dir

COMPLETE = "COMPLETE"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [d for d in root.glob("step-*") if (d / COMPLETE).exists()]
    return sorted(done, key=lambda d: int(d.name.split("-")[1]))


def latest(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save(
    run_dir: str | Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any], keep: int,
    weights: dict[str, Any] | None = None,
) -> Path:
    """`weights`: a full state dict gathered from sharded ranks (FSDP); None saves the model's own."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
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


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)


def load_weights(model: Any, ckpt: str | Path) -> None:
    """Model weights only (a stage starting from the previous stage): safetensors, strict."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    if not (ckpt / "model.safetensors").exists():
        found = latest(ckpt)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt}")
        ckpt = found
    missing, unexpected = model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ValueError(f"checkpoint {ckpt} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
