"""The held-out evaluation split: each video goes to `train` or `eval` by its key alone.

A hash of the key (not the order videos arrive in, nor the run attempt) decides, so a resumed or repeated run
puts every video in the same split, and a model trained on a run's `train` shards never saw its `eval` ones.
Eval samples go to their own shards (`<prefix>-eval-...`); `shards.json` and `index.parquet` name the split
(`split`; absent means train, as in runs made before the split existed).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

TRAIN, EVAL = "train", "eval"


def split_of(key: str, eval_fraction: float) -> str:
    """`eval` for about `eval_fraction` of all keys, the same ones on every run."""
    if eval_fraction <= 0:
        return TRAIN
    draw = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return EVAL if draw < eval_fraction else TRAIN


def split_name(entry: dict[str, Any]) -> str:
    """The split of a shards.json entry or an index row."""
    return entry.get("split") or TRAIN


def of_split(entries: Iterable[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    return [e for e in entries if split_name(e) == split]
