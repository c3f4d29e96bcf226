"""Where videos come from: a folder, a manifest (jsonl / csv / parquet) or a LLaVA annotation JSON.

Each source becomes a `VideoTask` with a stable key derived from the source
(the manifest's `id`, else the path relative to the input root plus a short
hash), so reruns and resumes address the same sample. Paths are resolved with
symlinks followed and, when `input.allowed_roots` is set, confined to those
folders (`locate.py`); a source that cannot be used becomes a reject, never an exception.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline.core.config_load import ConfigError
from pipeline.video.config_video import InputConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.video.keyset import GrowingKeySet
from pipeline.video.llava_source import llava_chunks
from pipeline.video.manifests import LOADERS
from pipeline.core.storage import is_remote
from pipeline.video.locate import PATH_FIELDS, Bounds, base_of, key_for_path, locate, printable, sanitize_key
from pipeline.video.paths import check_regular_file
from pipeline.video.scratch import scratch_dir
from pipeline.core.records import Rejection
from pipeline.core.task import VideoTask, signed_source

MANIFEST_SCRATCH = "prolongvid-manifest-"  # a remote manifest's local copy, in this process's scratch
CHUNK = 10_000  # sources read, checked and handed on at a time


@dataclass
class Sources:
    tasks: list[VideoTask]
    rejects: list[Rejection]
    kind: str
    skipped_by_extension: int = 0  # folder entries that are not videos by their name (counted, not rejected)
    skipped_suffixes: dict[str, int] = field(default_factory=dict)  # how many of each suffix were skipped


@dataclass
class SourceChunk:
    tasks: list[VideoTask]
    rejects: list[Rejection]


def input_kind(cfg: InputConfig) -> str:
    """folder, jsonl, csv, parquet or llava: the format, or what the path is when the format is auto."""
    if cfg.format != "auto":
        return cfg.format
    kinds = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "llava"}
    if is_remote(cfg.path):  # a prefix is a folder; a manifest by its suffix
        suffix = os.path.splitext(cfg.path.rstrip("/"))[1].lower()
        return kinds.get(suffix, "folder") if not cfg.path.endswith("/") else "folder"
    path = Path(cfg.path)
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in kinds:
        return kinds[suffix]
    if not path.exists():
        raise ConfigError(f"input.path: {cfg.path} does not exist")
    raise ConfigError(f"input.path: {cfg.path} is not a folder, .jsonl, .csv, .parquet or LLaVA .json file")


class SourceStream:
    """The sources of an input, read lazily: `chunks()` yields CHUNK sources at a time (tasks and rejects, with
    their record numbers), so the driver never holds every task. The counters are complete once it is exhausted.

    Manifests and folders stream; a LLaVA JSON's records are grouped per video (a video's conversations may be
    anywhere in the file) through a temporary on-disk table (`pipeline/video/llava_source.py`). `kind` is the
    run plan's `input_kind`; a reader without a plan leaves it to `input_kind`.
    """

    def __init__(self, cfg: InputConfig, chunk: int | None = None, kind: str | None = None):
        self.cfg, self.chunk, self.kind = cfg, chunk or CHUNK, kind or input_kind(cfg)
        self.remote = is_remote(cfg.path)
        self._scratch: Any = None
        if self.remote:
            self.root = cfg.path.rstrip("/")
            self.base: Path | str = self.root if self.kind == "folder" else \
                base_of(cfg.video_root) if cfg.video_root else self.root.rpartition("/")[0]
        else:
            self.root = Path(cfg.path).resolve()
            if self.kind == "folder" and not self.root.is_dir():
                raise ConfigError(f"input.path: {cfg.path} is not a folder")
            if self.kind != "folder" and not self.root.is_file():
                raise ConfigError(f"input.path: {cfg.path} is not a file")
            self.base = self.root if self.kind == "folder" else base_of(cfg.video_root) if cfg.video_root \
                else self.root.parent
        self.allowed = Bounds.of(cfg.allowed_roots)
        self.tasks_seen = self.rejects_seen = 0
        self.rows_read = 0  # input rows (records, or folder entries named like videos), counted as they are read
        self.skipped_suffixes: Counter[str] = Counter()

    @property
    def skipped_by_extension(self) -> int:
        return sum(self.skipped_suffixes.values())

    @property
    def input_rows(self) -> int:
        """Every row of the input: each ends as a sample's, a reject's or a skipped one."""
        return self.rows_read + self.skipped_by_extension

    def _counted(self, records: Iterable[Any]) -> Iterator[Any]:
        for rec in records:
            self.rows_read += 1
            yield rec

    def chunks(self) -> Iterator[SourceChunk]:
        for chunk in self._chunks():
            self.tasks_seen += len(chunk.tasks)
            self.rejects_seen += len(chunk.rejects)
            yield chunk

    def _chunks(self) -> Iterator[SourceChunk]:
        max_frames = self.cfg.max_frames_per_sample
        if self.kind == "llava":
            records = self._counted(LOADERS["llava"](self._local_manifest()))
            located = lambda rec, n: locate(rec, n, self.base, self.allowed)  # noqa: E731
            for tasks, rejects in llava_chunks(records, located, key_for_path, PATH_FIELDS, self.chunk):
                yield SourceChunk(tasks, rejects)
            return
        seen = GrowingKeySet()  # every key handed on so far: a later source with one is a duplicate_key reject
        records = self._counted(self._folder() if self.kind == "folder" else LOADERS[self.kind](self._local_manifest()))
        batch: list[tuple[int, dict[str, Any]]] = []
        early: list[Rejection] = []
        for n, rec in enumerate(records):  # every record is an input row, numbered from 0, rejects included
            if isinstance(rec, Rejection):
                early.append(rec.at_row(n))
            else:
                batch.append((n, rec))
            if len(batch) + len(early) >= self.chunk:
                tasks, rejects = _to_tasks(batch, self.base, self.allowed, max_frames, seen=seen)
                yield SourceChunk(tasks, early + rejects)
                batch, early = [], []
        if batch or early:
            tasks, rejects = _to_tasks(batch, self.base, self.allowed, max_frames, seen=seen)
            yield SourceChunk(tasks, early + rejects)

    def _local_manifest(self) -> Path:
        """The manifest as a local file: a remote one is copied to this process's scratch first (read once)."""
        if not self.remote:
            return self.root
        from pipeline.core.storage import NotFound, Storage, StorageError

        self._scratch = scratch_dir(MANIFEST_SCRATCH)
        local = Path(self._scratch.name) / self.root.rpartition("/")[2]
        parent, _, name = self.root.rpartition("/")
        try:
            with open(local, "wb") as out:
                for chunk in Storage(parent).stream(name):
                    out.write(chunk)
        except NotFound:
            raise ConfigError(f"input.path: {self.root} does not exist") from None
        except StorageError as e:
            raise ConfigError(f"input.path: {e}") from None
        return local

    def _folder(self) -> Iterator[dict[str, Any] | Rejection]:
        records = _remote_folder_records(self.root, self.cfg) if self.remote else _folder_records(self.root, self.cfg)
        for item in records:
            if isinstance(item, str):
                self.skipped_suffixes[item] += 1
            else:
                yield item


def open_sources(cfg: InputConfig, chunk: int | None = None, kind: str | None = None) -> SourceStream:
    return SourceStream(cfg, chunk, kind)


def load_sources(cfg: InputConfig) -> Sources:
    """Every source at once (tests and small inputs); a run streams them with `open_sources`."""
    stream = open_sources(cfg)
    tasks, rejects = [], []
    for chunk in stream.chunks():
        tasks += chunk.tasks
        rejects += chunk.rejects
    return Sources(tasks, rejects, stream.kind, stream.skipped_by_extension, dict(stream.skipped_suffixes))


def _walk(root: Path, recursive: bool) -> Iterator[tuple[str, bool | None, OSError | None]]:
    """(path, is a folder, error) for every entry under root, each folder's entries in name order and a folder's
    contents right after it; folders followed through symlinks but each real one once."""
    seen: set[tuple[int, int]] = set()
    stack = [_listing(str(root), seen)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        yield item
        if item[1] and recursive:
            stack.append(_listing(item[0], seen))


def _listing(folder: str, seen: set[tuple[int, int]]) -> Iterator[tuple[str, bool | None, OSError | None]]:
    try:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        yield folder, None, e
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        yield entry.path, is_dir, None


def _remote_folder_records(root: str, cfg: InputConfig) -> Iterator[dict[str, Any] | str]:
    """An object-store prefix read like a folder, a page of the listing at a time: the same extensions and keys
    (the path relative to the prefix); every object's size and ETag go with it, for the fetch to check."""
    from pipeline.core.storage import Storage, StorageError

    exts = {e.lower() for e in cfg.extensions}
    try:
        for page in Storage(root).list_pages():
            for info in page:
                if not cfg.recursive and "/" in info.path:
                    continue
                suffix = os.path.splitext(info.path)[1].lower()
                if suffix not in exts:
                    yield suffix or "(none)"
                    continue
                yield {"path": info.path, "_listing": {"size": info.size, "etag": info.etag}}
    except StorageError as e:
        raise ConfigError(f"input.path: {e}") from None


def _folder_records(root: Path, cfg: InputConfig) -> Iterator[dict[str, Any] | Rejection | str]:
    """Video candidates by extension as records; every candidate that cannot be a file as a reject; every other
    entry that is not a folder as its suffix (counted, not rejected)."""
    exts = {e.lower() for e in cfg.extensions}
    for path, is_dir, error in _walk(root, cfg.recursive):
        rel = os.path.relpath(path, root)
        if error is not None:
            yield Rejection(printable(path), "source", Reason.UNREADABLE.value,
                            f"folder cannot be listed: {error.strerror or error}", key_for_path(rel))
            continue
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in exts:
            if not is_dir:
                yield suffix or "(none)"
            continue
        try:
            check_regular_file(path)
        except VideoError as e:
            yield Rejection(printable(path), "source", e.reason.value, e.detail if e.reason is not Reason.BAD_PATH
                            else f"path is not valid UTF-8: {printable(path)}", key_for_path(rel))
            continue
        yield {"path": rel}


def _to_tasks(
    records: Iterable[tuple[int, dict[str, Any]]], base: Path | str, allowed: Bounds, max_frames: int = 1024,
    seen: GrowingKeySet | None = None,
) -> tuple[list[VideoTask], list[Rejection]]:
    """Tasks and rejects of (record number, record) pairs; `seen` holds the keys of earlier chunks (and gets these).
    Each task and reject carries its record number: two records are never one row."""
    tasks: dict[str, VideoTask] = {}
    numbers: dict[str, int] = {}
    rejects: list[Rejection] = []
    for n, rec in records:
        located = locate(rec, n, base, allowed)
        if isinstance(located, Rejection):
            rejects.append(located.at_row(n))
            continue
        source, rel = located
        key = sanitize_key(str(rec["id"])) if rec.get("id") not in (None, "") else key_for_path(rel)
        if key in tasks:
            first = tasks[key].source
            rejects.append(Rejection(source, "source", Reason.DUPLICATE_KEY.value,
                                     f"record {n}: key {key} already taken by record {numbers[key]} ({first})", key, n))
            continue
        try:
            tasks[key] = VideoTask(key, meta=_manifest_meta(rec, rel, max_frames), source_row=n, **signed_source(source))
            numbers[key] = n
        except (ValueError, TypeError) as e:
            rejects.append(Rejection(source, "source", Reason.BAD_SOURCE.value, f"record {n}: {e}", key, n))
    if seen is not None and tasks:
        for key, first in zip(list(tasks), seen.value_of(list(tasks))):
            if first >= 0:
                task = tasks.pop(key)
                rejects.append(Rejection(task.source, "source", Reason.DUPLICATE_KEY.value,
                                         f"record {numbers[key]}: key {key} already taken by record {first}", key,
                                         numbers[key]))
        seen.add(list(tasks), [numbers[k] for k in tasks])
    return list(tasks.values()), rejects


def _manifest_meta(rec: dict[str, Any], rel: str, max_frames: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"video_rel": rel}
    if "_listing" in rec:  # a remote folder's object: its size and ETag as listed
        meta["listing"] = rec["_listing"]
    extra = {k: v for k, v in rec.items()
             if k not in PATH_FIELDS and k not in ("id", "conversations", "num_frames", "_listing")}
    if extra:
        meta["extra"] = json.loads(json.dumps(extra, default=str))
    if rec.get("num_frames") not in (None, ""):
        frames = int(rec["num_frames"])
        if not 0 < frames <= max_frames:
            raise ValueError(f"num_frames {frames} outside 1..{max_frames} (input.max_frames_per_sample)")
        meta["num_frames"] = frames
    if rec.get("conversations"):
        conv = rec["conversations"]
        conv = json.loads(conv) if isinstance(conv, str) else conv
        meta["conversations"] = [{"id": rec.get("id", ""), "conversations": conv}]
    return meta
