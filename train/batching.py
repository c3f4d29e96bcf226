"""Training items -> batches: bucketed by frame count and length, and resumable exactly.

A batch stacks its videos, so every item in it must have the same frame count
(an overlong sample may have been given fewer frames); items are bucketed by
frame count and, with `data.length_bucket_tokens`, by sequence length, so a
batch pads little. A bucket is emitted when it holds `batch_size` items; at
the end of an epoch the partial buckets are emitted too. With `data.packing`
there is one bucket: its items go end to end in one row (`train/packing.py`),
whatever their frame counts and lengths.

Exact resume, with or without loader workers: each worker's items are
numbered, and the reader takes them in a fixed round robin over the workers
(whatever order the DataLoader delivers them in). The checkpoint keeps the
epoch, the items taken from each worker, the next worker and the items still
waiting in buckets; a resumed stream restarts each worker at its first item
not yet trained, restores the waiting ones into their buckets, and continues
the round robin, so the batches are the ones an uninterrupted run makes.
The records involved (`WorkerItem`, `WorkerEnd`, `DataPosition`) are in
`train/position.py`.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from train.chat import IGNORE, ChatEncoder
from train.data import build_dataset
from train.packing import collate_packed
from train.position import DataPosition, WorkerEnd, WorkerItem
from train.topology import Topology


def collate(items: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    frames = {tuple(i["pixel_values"].shape) for i in items}
    if len(frames) > 1:
        raise ValueError(f"a batch mixes frame shapes {sorted(frames)}")
    width = max(len(i["input_ids"]) for i in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = item["input_ids"], item["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask,
            "pixel_values_videos": torch.stack([i["pixel_values"] for i in items]),
            "ids": [str(i.get("id", "")) for i in items]}  # fmt: skip


@dataclass
class Taken:
    """An item in the stream's canonical order; `restored`: it was waiting in a bucket at the checkpoint."""

    source: WorkerItem
    restored: bool = False


@dataclass
class EpochEnd:
    """Every worker's stream of the epoch has ended: partial buckets go out."""

    epoch: int


class DataStream:
    """Endless batches over epochs; `position` (`state_dict()` as plain data) is what a checkpoint keeps to continue
    them exactly, `restore` (or `load_state_dict`) continues from it.

    `tokens_per_frame`: the model's; `topology`: which data reader this rank is (`train/topology.py`; None: the
    process group's rank). The data seed is the run's (`cfg.seed`), the same on every rank.
    """

    def __init__(self, cfg: Any, encoder: ChatEncoder, pad_id: int, *, tokens_per_frame: int,
                 topology: Topology | None = None):  # fmt: skip
        self.cfg, self.encoder, self.pad_id = cfg, encoder, pad_id
        self.tokens_per_frame, self.topology = tokens_per_frame, topology
        self.workers = max(1, cfg.data.num_workers)
        self._buckets: dict[tuple[int, int], list[WorkerItem]] = {}
        self.passed_over: Counter = Counter()  # items the loader passed over (refused, too long, bad frames), by reason
        self.restore(DataPosition())

    def restore(self, position: DataPosition) -> None:
        """Continue from `position` (before the first batch is drawn)."""
        self.epoch = position.epoch
        self.consumed = (list(position.consumed) + [0] * self.workers)[: self.workers]  # items taken from each worker
        self.next_worker = position.next_worker % self.workers
        self._replay = [tuple(p) for p in position.pending]  # (worker, index) in bucket order

    @property
    def pending(self) -> list[tuple[int, int]]:
        """(worker, index) of everything waiting in buckets, in the order it arrived."""
        return [waiting.key for bucket in self._buckets.values() for waiting in bucket]

    @property
    def position(self) -> DataPosition:
        return DataPosition(self.epoch, list(self.consumed), self.pending, self.next_worker)

    def state_dict(self) -> dict[str, Any]:
        return self.position.to_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restore(DataPosition.from_state(state))

    def _items(self) -> Iterator[Taken | EpochEnd]:
        """Items in one canonical order, round robin over the loader workers, then the epoch's end; epoch after epoch.

        The canonical order depends only on the workers' streams, so an uninterrupted run and a resumed one
        agree whatever order the DataLoader delivers in; items from before the checkpoint are dropped, except
        the ones that were waiting in buckets, which are restored first, in their saved order.
        """
        while True:
            before, replay = list(self.consumed), list(self._replay)
            skips = [min([i for w, i in replay if w == worker] + [before[worker]]) for worker in range(self.workers)]
            dataset = build_dataset(self.cfg.data, self.encoder, tokens_per_frame=self.tokens_per_frame,
                                    seed=self.cfg.seed, topology=self.topology, epoch=self.epoch, skip=skips)
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.cfg.data.num_workers)
            queues: list[deque[WorkerItem | WorkerEnd]] = [deque() for _ in range(self.workers)]
            restored: dict[tuple[int, int], WorkerItem] = {}
            active, seen = [True] * self.workers, 0
            for got in loader:
                self.passed_over.update(got.passed)
                if isinstance(got, WorkerEnd):
                    queues[got.worker].append(got)
                elif got.index < before[got.worker]:  # from before the checkpoint
                    if got.key in replay:
                        restored[got.key] = got
                    continue
                else:
                    queues[got.worker].append(got)
                if replay and len(restored) == len(replay):
                    for key in replay:
                        yield Taken(restored.pop(key), restored=True)
                    replay = []
                if not replay:
                    for taken in self._round_robin(queues, active):
                        seen += 1
                        yield taken
            for key in replay:  # the loader ended: whatever could be restored, then the rest of the queues
                if key in restored:
                    yield Taken(restored.pop(key), restored=True)
            for taken in self._round_robin(queues, active):
                seen += 1
                yield taken
            if seen == 0 and self.epoch_is_empty(before):
                raise RuntimeError(f"no training items in {self.cfg.data.shards} for this rank (fewer shards than ranks?)")
            self._replay = []
            yield EpochEnd(self.epoch)
            self.epoch, self.consumed, self.next_worker = self.epoch + 1, [0] * self.workers, 0

    def epoch_is_empty(self, before: list[int]) -> bool:
        return not any(before) and not self._buckets

    def _round_robin(self, queues: list[deque[WorkerItem | WorkerEnd]], active: list[bool]) -> Iterator[Taken]:
        while any(active):
            worker = self.next_worker
            if not active[worker]:
                self.next_worker = (worker + 1) % self.workers
                continue
            if not queues[worker]:
                return  # wait for the loader to deliver this worker's next item
            got = queues[worker].popleft()
            self.next_worker = (worker + 1) % self.workers
            if isinstance(got, WorkerEnd):
                active[worker] = False
                continue
            self.consumed[worker] = got.index + 1
            yield Taken(got)

    def _key(self, item: dict[str, Any]) -> tuple[int, int]:
        if getattr(self.cfg.data, "packing", False):
            return 0, 0
        width = self.cfg.data.length_bucket_tokens
        return int(item["pixel_values"].shape[0]), (len(item["input_ids"]) // width if width else 0)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        size = self.cfg.data.batch_size
        for entry in self._items():
            if isinstance(entry, EpochEnd):  # partial buckets go out, ordered by their first item's (worker, index)
                for key in sorted(self._buckets, key=lambda k: self._buckets[k][0].key):
                    yield self._collate([waiting.item for waiting in self._buckets.pop(key)])
                continue
            key = self._key(entry.source.item)
            bucket = self._buckets.setdefault(key, [])
            bucket.append(entry.source)
            if not entry.restored and len(bucket) == size:
                del self._buckets[key]
                yield self._collate([waiting.item for waiting in bucket])

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_packed(items) if getattr(self.cfg.data, "packing", False) else collate(items, self.pad_id)
