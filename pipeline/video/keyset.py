"""Compact, exact sets of strings for a million keys: Arrow strings sorted by a 64-bit hash, no Python object per key.

A lookup finds candidates by hash (numpy `searchsorted`) and confirms them by comparing the strings
(`pyarrow.compute.equal`), so a hash collision never makes a key look present. `GrowingKeySet` adds a batch
at a time (the keys of a chunk of sources) and merges its batches now and then so lookups stay cheap.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _hashes(keys: list[str]) -> np.ndarray:
    return np.fromiter((hash(k) for k in keys), dtype=np.int64, count=len(keys))


class KeySet:
    """An immutable set of strings (with an optional int64 value per string, e.g. the row it came from)."""

    def __init__(self, keys: pa.Array, hashes: np.ndarray, values: np.ndarray | None = None):
        self.keys, self.hashes, self.values = keys, hashes, values

    @classmethod
    def build(cls, keys: Iterable[str], values: Iterable[int] | None = None) -> "KeySet":
        keys = list(keys)
        hashes = _hashes(keys)
        order = np.argsort(hashes, kind="stable")
        vals = None if values is None else np.fromiter(values, dtype=np.int64, count=len(keys))[order]
        return cls(pa.array(keys, pa.string()).take(pa.array(order)), hashes[order], vals)

    @classmethod
    def merge(cls, sets: list["KeySet"]) -> "KeySet":
        hashes = np.concatenate([s.hashes for s in sets]) if sets else np.zeros(0, np.int64)
        order = np.argsort(hashes, kind="stable")
        keys = pa.concat_arrays([s.keys for s in sets]) if sets else pa.array([], pa.string())
        values = np.concatenate([s.values for s in sets])[order] if sets and sets[0].values is not None else None
        return cls(keys.take(pa.array(order)), hashes[order], values)

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, keys: list[str], asked: tuple[np.ndarray, pa.Array] | None = None) -> np.ndarray:
        """For each key, its position in this set, or -1 (`asked`: the keys' hashes and Arrow array, if made)."""
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(self.hashes) or not keys:
            return out
        wanted, asked = asked or (_hashes(keys), pa.array(keys, pa.string()))
        lo = np.searchsorted(self.hashes, wanted, side="left")
        hi = np.searchsorted(self.hashes, wanted, side="right")
        span = hi - lo
        for step in range(int(span.max())):  # almost always one candidate per key: one vectorised pass
            idx = np.nonzero((span > step) & (out < 0))[0]
            if not len(idx):
                break
            pos = lo[idx] + step
            same = pc.equal(self.keys.take(pa.array(pos)), asked.take(pa.array(idx))).to_numpy(zero_copy_only=False)
            out[idx[same]] = pos[same]
        return out

    def contains(self, keys: list[str]) -> np.ndarray:
        return self.find(keys) >= 0


class GrowingKeySet:
    """Keys added a batch at a time; every MERGE_EVERY batches are merged into one sorted set."""

    MERGE_EVERY = 16

    def __init__(self) -> None:
        self.sets: list[KeySet] = []

    def add(self, keys: list[str], values: list[int]) -> None:
        if keys:
            self.sets.append(KeySet.build(keys, values))
        if len(self.sets) >= self.MERGE_EVERY:
            self.sets = [KeySet.merge(self.sets)]

    def value_of(self, keys: list[str]) -> np.ndarray:
        """For each key, the value it was added with, or -1 if it was never added."""
        out = np.full(len(keys), -1, dtype=np.int64)
        asked = (_hashes(keys), pa.array(keys, pa.string())) if self.sets and keys else None
        for s in self.sets:
            pos = s.find(keys, asked)
            hit = (pos >= 0) & (out < 0)
            out[hit] = s.values[pos[hit]]
        return out

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets)
