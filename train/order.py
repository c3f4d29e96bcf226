"""Whole-epoch permutations of a run's training items, read by key across shards.

`data.order: permutation` is the paper's sampler: its trainer draws every
conversation record in a new random order each epoch, so one batch mixes
conversations of many videos. The items are (sample key, conversation number)
pairs from the run's `index.parquet` (`num_conversations`), sorted, then
permuted with (seed, epoch). `video_permutation` permutes the sample keys
instead, a video's conversations coming out back to back (one frame decode
for all of them). A shard shuffle with a buffer only mixes samples that are
near each other in the shards. Rank r takes every world-th item from r, and
loader worker w every workers-th of those. Each worker's stream depends only on
(seed, epoch, rank, worker), so the item numbering `batching.py` resumes by is
the same after a restart. Samples are read from their tar by member offsets
(one header scan per shard and worker), and a frame is read only when a
stage takes it (a byte range of the sample's `frames.mjpeg`, by the offsets in
its json; one member per frame in layout-1 shards).
"""

from __future__ import annotations

import tarfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.core.storage import is_remote
from shards.layout import RunDir
from shards.remote import RangedFile, remote_index
from shards.split import TRAIN, of_split
from train.topology import Topology


def epoch_keys(keys: list[str], seed: int, epoch: int) -> list[str]:
    """The epoch's order: the sorted keys permuted by (seed, epoch), the same on every rank."""
    ordered = sorted(keys)
    return [ordered[i] for i in np.random.default_rng([seed, epoch]).permutation(len(ordered))]


def epoch_items(conversations: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of (sample, conversation) items as item numbers: item i is conversation
    i - offsets[s] of sample s (samples in sorted key order, `conversations[s]` each), permuted by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(int(conversations.sum()))


def item_of(numbers: np.ndarray, conversations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sample, conversation) of each item number (`epoch_items`)."""
    offsets = np.concatenate([[0], np.cumsum(conversations)])
    samples = np.searchsorted(offsets, numbers, side="right") - 1
    return samples, numbers - offsets[samples]


def _index_rows(spec: str) -> tuple[list[dict[str, Any]], Callable[[str], str]]:
    """The index's train rows and how a shard name becomes its path."""
    from shards.reader import read_index

    hint = "(point data.shards at a pipeline output dir, or use data.order shard_shuffle)"
    if is_remote(spec):
        table = remote_index(spec)
        if table is None:
            raise FileNotFoundError(f"data.order permutation reads the sample index: {spec}/index.parquet does "
                                    f"not exist {hint}")
        root = spec.rstrip("/")
        return of_split(table.to_pylist(), TRAIN), lambda shard: f"{root}/shards/{shard}"
    run = RunDir(spec)
    if not run.index.exists():
        raise FileNotFoundError(f"data.order permutation reads the sample index: {run.index} does not exist {hint}")
    return of_split(read_index(run), TRAIN), lambda shard: str(run.shards / shard)


def run_samples(spec: str) -> list[tuple[str, str]]:
    """(key, shard path) of every sample of a pipeline output dir, from its index."""
    rows, path = _index_rows(spec)
    return [(row["key"], path(row["shard"])) for row in rows]


def run_conversations(spec: str) -> tuple[list[str], list[str], np.ndarray]:
    """Sorted sample keys, their shard paths and conversation counts, from the run's index."""
    rows, path = _index_rows(spec)
    if rows and "num_conversations" not in rows[0]:
        raise ValueError(f"{spec}: its index has no num_conversations column, which data.order permutation needs "
                         "(re-run the pipeline with this version, or use data.order video_permutation)")
    rows = sorted(rows, key=lambda row: row["key"])
    counts = np.array([int(row["num_conversations"] or 0) for row in rows], dtype=np.int64)
    return [row["key"] for row in rows], [path(row["shard"]) for row in rows], counts


REMOTE_READ_GAP = 1 << 20


OPEN_TARS = 64  # tars a loader worker keeps open: a permutation touches every shard, file handles are bounded


class TarMembers:
    """Where each sample's members sit in the tars it has opened: (offset, size) by key and member suffix; the
    `max_open` most recently read tars stay open (a run of 10,000 shards would exhaust a worker's file handles)."""

    def __init__(self, max_open: int = OPEN_TARS) -> None:
        self._tables: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}
        self._files: OrderedDict[str, Any] = OrderedDict()
        self.max_open = max_open

    def members(self, path: str, key: str) -> dict[str, tuple[int, int]]:
        if path not in self._tables:
            table: dict[str, dict[str, tuple[int, int]]] = {}
            opened = tarfile.open(fileobj=RangedFile(path), mode="r:") if is_remote(path) else tarfile.open(path, "r:")
            with opened as tar:  # headers only: tarfile seeks over the payloads
                for info in tar:
                    base, _, suffix = info.name.partition(".")
                    table.setdefault(base, {})[suffix] = (info.offset_data, info.size)
            self._tables[path] = table
        found = self._tables[path].get(key)
        if found is None:
            raise KeyError(f"sample {key} is not in {path} (the index and the shards disagree)")
        return found

    def read(self, path: str, offset: int, size: int) -> bytes:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = RangedFile(path) if is_remote(path) else open(path, "rb")
            while len(self._files) > self.max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(path)
        if isinstance(f, RangedFile):
            return f.read_at(offset, size)
        f.seek(offset)
        return f.read(size)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class LazySample(Mapping):
    """One sample as a webdataset dict whose members are read from the tar when first looked up."""

    def __init__(self, key: str, path: str, tars: TarMembers, conversation: int | None = None):
        self._key, self._path, self._tars = key, path, tars
        self.conversation = conversation  # the one conversation this item trains on (None: all of the sample's)
        # On an object store each read is a request: frames less than this apart come in one range.
        self.read_gap = REMOTE_READ_GAP if is_remote(path) else 0
        self._where = tars.members(path, key)
        self._cache: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> Any:
        if name == "__key__":
            return self._key
        if name not in self._cache:
            offset, size = self._where[name]
            self._cache[name] = self._tars.read(self._path, offset, size)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        yield "__key__"
        yield from self._where

    def __len__(self) -> int:
        return len(self._where) + 1

    def read_range(self, name: str, start: int, size: int) -> bytes:
        """`size` bytes of member `name` from `start`: one stored frame of a format-2 sample, nothing else read."""
        offset, total = self._where[name]
        if start < 0 or size < 0 or start + size > total:
            raise ValueError(f"sample {self._key}: bytes {start}+{size} lie outside member {name} ({total} bytes)")
        return self._tars.read(self._path, offset + start, size)


def reader_info(topology: Topology | None) -> tuple[int, int, int, int]:
    """(reader, readers, loader worker, workers): the topology's reader (the ranks of a sequence-parallel group
    read as one), or without one the process group's rank and size."""
    from webdataset.utils import pytorch_worker_info

    rank, world, worker, workers = pytorch_worker_info()
    if topology is not None:
        rank, world = topology.reader, topology.readers
    return rank, world, worker, workers


def permuted_samples(spec: str, seed: int, topology: Topology | None, epoch: int,
                     by: str = "conversation") -> Iterator[LazySample]:  # fmt: skip
    """This reader's (`reader_info`) and loader worker's share of the epoch's permutation, in order: one
    `LazySample` per (sample, conversation) item (`by="conversation"`) or per sample (`by="video"`)."""
    rank, world, worker, workers = reader_info(topology)
    tars = TarMembers()
    try:
        if by == "video":
            where = dict(run_samples(spec))
            for key in epoch_keys(list(where), seed, epoch)[rank::world][worker::workers]:
                yield LazySample(key, where[key], tars)
            return
        keys, paths, conversations = run_conversations(spec)
        mine = epoch_items(conversations, seed, epoch)[rank::world][worker::workers]
        samples, numbers = item_of(mine, conversations)
        for s, n in zip(samples.tolist(), numbers.tolist()):
            yield LazySample(keys[s], paths[s], tars, conversation=n)
    finally:
        tars.close()


def build_permuted(spec: str, seed: int, topology: Topology | None, epoch: int,
                   items: Callable[[Iterator[LazySample]], Iterator[Any]], by: str = "conversation") -> Any:  # fmt: skip
    """An iterable dataset of this worker's items: `items` turns the epoch's samples into training items
    (`data.worker_items`, which tags them with their worker and place for exact resume: `train/position.py`)."""
    import torch.utils.data

    class _Permuted(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[Any]:
            return items(permuted_samples(spec, seed, topology, epoch, by))

    return _Permuted()
