"""Training items -> batches: bucketed by frame count and length, and resumable exactly.

A batch stacks its videos, so every item in it must have the same frame count
(an overlong sample may have been given fewer frames); items are bucketed by
frame count and, with `data.length_bucket_tokens`, by sequence length, so a
batch pads little. A bucket is emitted when it holds `batch_size` items; at
the end of an epoch the partial buckets are emitted too.

Exact resume, with or without loader workers: each worker's items are
numbered, and the reader takes them in a fixed round robin over the workers
(whatever order the DataLoader delivers them in). The checkpoint keeps the
epoch, the items taken from each worker, the next worker and the items still
waiting in buckets; a resumed stream restarts each worker at its first item
not yet trained, restores the waiting ones into their buckets, and continues
the round robin, so the batches are the ones an uninterrupted run makes.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

import torch

from train.chat import IGNORE, ChatEncoder
from train.data import build_dataset

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


class DataStream:
    """Endless batches over epochs; `state()` is what a checkpoint keeps to continue them exactly."""

    def __init__(self, cfg: Any, encoder: ChatEncoder, pad_id: int, epoch: int = 0, consumed: Any = 0,
                 pending: list[Any] | None = None, next_worker: int = 0):  # fmt: skip
        self.cfg, self.encoder, self.pad_id = cfg, encoder, pad_id
        self.workers = max(1, cfg.data.num_workers)
        self.epoch = epoch
        counts = consumed if isinstance(consumed, list) else [consumed]
        self.consumed = (list(counts) + [0] * self.workers)[: self.workers]  # items taken from each worker's stream
        self.next_worker = next_worker % self.workers
        self._replay = [tuple(p) for p in (pending or []) if isinstance(p, (list, tuple))]  # (worker, item) in bucket order
        self._buckets: dict[tuple[int, int], list[tuple[tuple[int, int], dict[str, Any]]]] = {}

    @property
    def pending(self) -> list[list[int]]:
        """(worker, item) of everything waiting in buckets, in the order it arrived."""
        return [list(key) for bucket in self._buckets.values() for key, _ in bucket]

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": list(self.consumed), "pending": self.pending,
                "next_worker": self.next_worker}  # fmt: skip

    def _items(self) -> Iterator[tuple[str, tuple[int, int], dict[str, Any]] | None]:
        """('restore' | 'new', (worker, item), item) in one canonical order: round robin over the loader workers.

        The canonical order depends only on the workers' streams, so an uninterrupted run and a resumed one
        agree whatever order the DataLoader delivers in; items from before the checkpoint are dropped, except
        the ones that were waiting in buckets, which are restored first, in their saved order.
        """
        while True:
            before, replay = list(self.consumed), list(self._replay)
            skips = [min([i for w, i in replay if w == worker] + [before[worker]]) for worker in range(self.workers)]
            dataset = build_dataset(self.cfg.data, self.encoder, epoch=self.epoch, skip=skips)
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.cfg.data.num_workers)
            queues: list[deque] = [deque() for _ in range(self.workers)]
            restored: dict[tuple[int, int], dict[str, Any]] = {}
            active, seen = [True] * self.workers, 0
            for item in loader:
                worker = item["_w"]
                if item.get("_end"):
                    queues[worker].append(None)
                elif item["_i"] < before[worker]:  # from before the checkpoint
                    if (worker, item["_i"]) in replay:
                        restored[(worker, item["_i"])] = item
                    continue
                else:
                    queues[worker].append(item)
                if replay and len(restored) == len(replay):
                    for key in replay:
                        yield "restore", key, restored.pop(key)
                    replay = []
                if not replay:
                    for entry in self._round_robin(queues, active):
                        seen += 1
                        yield entry
            for key in replay:  # the loader ended: whatever could be restored, then the rest of the queues
                if key in restored:
                    yield "restore", key, restored.pop(key)
            for entry in self._round_robin(queues, active):
                seen += 1
                yield entry
            if seen == 0 and self.epoch_is_empty(before):
                raise RuntimeError(f"no training items in {self.cfg.data.shards} for this rank (fewer shards than ranks?)")
            self._replay = []
            yield None  # the epoch ends: partial buckets go out
            self.epoch, self.consumed, self.next_worker = self.epoch + 1, [0] * self.workers, 0

    def epoch_is_empty(self, before: list[int]) -> bool:
        return not any(before) and not self._buckets

    def _round_robin(self, queues: list[deque], active: list[bool]) -> Iterator[tuple[str, tuple[int, int], dict[str, Any]]]:
        while any(active):
            worker = self.next_worker
            if not active[worker]:
                self.next_worker = (worker + 1) % self.workers
                continue
            if not queues[worker]:
                return  # wait for the loader to deliver this worker's next item
            item = queues[worker].popleft()
            self.next_worker = (worker + 1) % self.workers
            if item is None:
                active[worker] = False
                continue
            self.consumed[worker] = item["_i"] + 1
            yield "new", (worker, item["_i"]), item

    def _key(self, item: dict[str, Any]) -> tuple[int, int]:
        width = self.cfg.data.length_bucket_tokens
        return int(item["pixel_values"].shape[0]), (len(item["input_ids"]) // width if width else 0)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        size = self.cfg.data.batch_size
        for entry in self._items():
            if entry is None:  # partial buckets go out in the order their first item came
                for key in sorted(self._buckets, key=lambda k: self._buckets[k][0][0]):
                    yield collate([item for _, item in self._buckets.pop(key)], self.pad_id)
                continue
            kind, tag, item = entry
            bucket = self._buckets.setdefault(self._key(item), [])
            bucket.append((tag, item))
            if kind == "new" and len(bucket) == size:
                del self._buckets[self._key(item)]
                yield collate([x for _, x in bucket], self.pad_id)
