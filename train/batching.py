"""Training items -> batches: bucketed by frame count and length, and resumable exactly.

A batch stacks its videos, so every item in it must have the same frame count
(an overlong sample may have been given fewer frames); items are bucketed by
frame count and, with `data.length_bucket_tokens`, by sequence length, so a
batch pads little. A bucket is emitted when it holds `batch_size` items; at
the end of an epoch the partial buckets are emitted too.

Exact resume: every item has its index in the epoch's stream. The checkpoint
keeps the epoch, the stream position and the indices still waiting in
buckets; a resumed stream restarts at the first waiting index and passes over
the items that were already trained, so the batches are the ones an
uninterrupted run would have made.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from train.chat import IGNORE, ChatEncoder
from train.data import build_dataset

EPOCH_END = None


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
            "pixel_values_videos": torch.stack([i["pixel_values"] for i in items])}  # fmt: skip


class DataStream:
    """Endless batches over epochs; `epoch`, `consumed` and `pending` are what a checkpoint keeps."""

    def __init__(self, cfg: Any, encoder: ChatEncoder, pad_id: int, epoch: int = 0, consumed: int = 0,
                 pending: list[int] | None = None):  # fmt: skip
        self.cfg, self.encoder, self.pad_id = cfg, encoder, pad_id
        self.epoch, self.consumed = epoch, consumed
        self._replay = set(pending or [])  # waiting in buckets when the checkpoint was taken
        self._buckets: dict[tuple[int, int], list[tuple[int, dict[str, Any]]]] = {}

    @property
    def pending(self) -> list[int]:
        return sorted(i for bucket in self._buckets.values() for i, _ in bucket)

    def _items(self) -> Iterator[tuple[int, dict[str, Any]] | None]:
        while True:
            start = min(self._replay) if self._replay else self.consumed
            dataset = build_dataset(self.cfg.data, self.encoder, epoch=self.epoch, skip=start)
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.cfg.data.num_workers)
            index, done_before = start, self.consumed
            for item in loader:
                i, index = index, index + 1
                if i < done_before and i not in self._replay:
                    continue  # trained before the checkpoint
                self.consumed = max(self.consumed, i + 1)
                yield i, item
            if index == 0:
                raise RuntimeError(f"no training items in {self.cfg.data.shards} for this rank (fewer shards than ranks?)")
            self._replay = set()
            yield EPOCH_END
            self.epoch, self.consumed = self.epoch + 1, 0

    def _key(self, item: dict[str, Any]) -> tuple[int, int]:
        width = self.cfg.data.length_bucket_tokens
        return int(item["pixel_values"].shape[0]), (len(item["input_ids"]) // width if width else 0)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        size = self.cfg.data.batch_size
        for entry in self._items():
            if entry is EPOCH_END:  # partial buckets go out in the order their first item came
                for key in sorted(self._buckets, key=lambda k: self._buckets[k][0][0]):
                    yield collate([item for _, item in self._buckets.pop(key)], self.pad_id)
                continue
            bucket = self._buckets.setdefault(self._key(entry[1]), [])
            bucket.append(entry)
            if len(bucket) == size:
                del self._buckets[self._key(entry[1])]
                yield collate([item for _, item in bucket], self.pad_id)
