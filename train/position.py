"""Where the data stream stands, as typed records: what crosses the loader-worker boundary and what a checkpoint keeps.

- `WorkerItem`: a training item tagged with the loader worker that made it and its place in that worker's stream.
- `WorkerEnd`: a worker's stream has ended (this epoch).
- `DataPosition`: epoch, items taken from each worker, items waiting in batch buckets, next worker of the round
  robin (`train/batching.py`); a checkpoint keeps every rank's (`to_state` / `from_state`).

All are plain dataclasses: the DataLoader pickles the first two between processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerItem:
    worker: int  # the loader worker whose stream it comes from
    index: int  # its place in that worker's stream, items dropped later (bad frames) counted: exact resume
    item: dict[str, Any]  # pixel_values, input_ids, labels, id, ... (`data.training_items`)
    passed: dict[str, int] = field(default_factory=dict)  # items passed over since the worker's last one, by reason

    @property
    def key(self) -> tuple[int, int]:
        return self.worker, self.index


@dataclass
class WorkerEnd:
    worker: int
    passed: dict[str, int] = field(default_factory=dict)  # passed over after the worker's last item, by reason


@dataclass
class DataPosition:
    epoch: int = 0
    consumed: list[int] = field(default_factory=list)  # items taken from each worker's stream this epoch
    pending: list[tuple[int, int]] = field(default_factory=list)  # (worker, index) waiting in buckets, in order
    next_worker: int = 0  # the worker whose item the round robin takes next

    def to_state(self) -> dict[str, Any]:
        """Plain lists and ints (a checkpoint loads them with `weights_only`)."""
        return {"epoch": self.epoch, "consumed": list(self.consumed), "pending": [list(p) for p in self.pending],
                "next_worker": self.next_worker}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DataPosition:
        """`to_state`'s dict. Older states may hold one count for `consumed` (one worker) and lack the later fields;
        entries of `pending` that are not pairs are passed over."""
        consumed = state.get("consumed") or 0
        return cls(epoch=int(state.get("epoch") or 0),
                   consumed=[int(c) for c in consumed] if isinstance(consumed, (list, tuple)) else [int(consumed)],
                   pending=[(int(p[0]), int(p[1])) for p in state.get("pending") or [] if isinstance(p, (list, tuple))],
                   next_worker=int(state.get("next_worker") or 0))  # fmt: skip
