"""Where videos come from: a folder, a manifest (jsonl / csv / parquet) or a LLaVA annotation JSON.

Each source becomes a `VideoTask` with a stable key derived from the source
(the manifest's `id`, else the path relative to the input root plus a short
hash), so reruns and resumes address the same sample. Paths are resolved with
symlinks followed and, when `input.allowed_roots` is set, confined to those
folders; a source that cannot be used becomes a reject, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import re
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config_load import ConfigError
from pipeline.config_video import InputConfig
from pipeline.errors import Reason, VideoError
from pipeline.manifests import LOADERS
from pipeline.paths import check_path_text, check_regular_file
from pipeline.records import Rejection
from pipeline.task import VideoTask

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
PATH_FIELDS = ("path", "video", "video_path")


def sanitize_key(text: str, limit: int = 80) -> str:
    """Only [A-Za-z0-9_-]: no '/', '..', dots (webdataset splits keys at dots) or control characters."""
    key = _UNSAFE.sub("_", text).strip("_-")
    return key[:limit] or "video"


def key_for_path(rel: str) -> str:
    """A readable, collision-safe key: the sanitised relative path plus 8 hex digits of its hash."""
    digest = hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return f"{sanitize_key(stem, 70)}-{digest}"


@dataclass
class Sources:
    tasks: list[VideoTask]
    rejects: list[Rejection]
    kind: str
    skipped_by_extension: int = 0  # folder entries that are not videos by their name (counted, not rejected)
    skipped_suffixes: dict[str, int] = field(default_factory=dict)  # how many of each suffix were skipped


def input_kind(cfg: InputConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    path = Path(cfg.path)
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    kinds = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "llava"}
    if suffix in kinds:
        return kinds[suffix]
    if not path.exists():
        raise ConfigError(f"input.path: {cfg.path} does not exist")
    raise ConfigError(f"input.path: {cfg.path} is not a folder, .jsonl, .csv, .parquet or LLaVA .json file")


def load_sources(cfg: InputConfig) -> Sources:
    kind = input_kind(cfg)
    root = Path(cfg.path).resolve()
    if kind == "folder":
        if not root.is_dir():
            raise ConfigError(f"input.path: {cfg.path} is not a folder")
        records, folder_rejects, skipped = _folder_records(root, cfg)
        base = root
    else:
        if not root.is_file():
            raise ConfigError(f"input.path: {cfg.path} is not a file")
        base = Path(cfg.video_root).resolve() if cfg.video_root else root.parent
        records, folder_rejects, skipped = LOADERS[kind](root), [], Counter()  # streamed, one record at a time
    allowed = [Path(r).resolve() for r in cfg.allowed_roots]
    tasks, rejects = _to_tasks(records, base, allowed, group=(kind == "llava"), max_frames=cfg.max_frames_per_sample)
    return Sources(tasks, folder_rejects + rejects, kind, sum(skipped.values()), dict(skipped))


def printable(path: str) -> str:
    """A path as storable text: bytes that are not UTF-8 shown as escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _walk(root: Path, recursive: bool):
    """(path, is a folder) for every entry under root, folders followed through symlinks but each real one once."""
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            yield folder, None, e
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir and recursive:
                stack.append(entry.path)
            yield entry.path, is_dir, None


def _folder_records(root: Path, cfg: InputConfig) -> tuple[list[dict[str, Any]], list[Rejection], Counter]:
    """Video candidates by extension; every candidate that cannot be a file is a reject, every other entry counted."""
    exts = {e.lower() for e in cfg.extensions}
    records, rejects, skipped = [], [], Counter()
    for path, is_dir, error in _walk(root, cfg.recursive):
        rel = os.path.relpath(path, root)
        if error is not None:
            rejects.append(Rejection(printable(path), "source", Reason.UNREADABLE.value,
                                     f"folder cannot be listed: {error.strerror or error}", key_for_path(rel)))
            continue
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in exts:
            if not is_dir:
                skipped[suffix or "(none)"] += 1
            continue
        try:
            check_regular_file(path)
        except VideoError as e:
            rejects.append(Rejection(printable(path), "source", e.reason.value, e.detail if e.reason is not Reason.BAD_PATH
                                     else f"path is not valid UTF-8: {printable(path)}", key_for_path(rel)))
            continue
        records.append({"path": rel})
    records.sort(key=lambda r: r["path"])
    return records, rejects, skipped





def _video_field(rec: dict[str, Any]) -> str | None:
    for name in PATH_FIELDS:
        value = rec.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _resolve(raw: str, base: Path, allowed: list[Path]) -> tuple[Path, str | None]:
    path = (base / raw).resolve() if not Path(raw).is_absolute() else Path(raw).resolve()
    if allowed and not any(path.is_relative_to(root) for root in allowed):
        return path, f"{raw} resolves to {path}, outside input.allowed_roots"
    return path, None


def _rel(path: Path, raw: str, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return raw


def _to_tasks(
    records: list[dict[str, Any]], base: Path, allowed: list[Path], group: bool, max_frames: int = 1024
) -> tuple[list[VideoTask], list[Rejection]]:
    tasks: dict[str, VideoTask] = {}
    by_source: dict[str, str] = {}
    rejects: list[Rejection] = []
    for n, rec in enumerate(records):
        raw = _video_field(rec) if isinstance(rec, dict) else None
        if raw is None:
            why = rec.get("_bad") if isinstance(rec, dict) else None
            rejects.append(Rejection(f"record {n}", "source", Reason.BAD_SOURCE.value, why or f"no {'/'.join(PATH_FIELDS)} field"))
            continue
        try:
            check_path_text(raw)
            path, outside = _resolve(raw, base, allowed)
        except (VideoError, RuntimeError, OSError, ValueError) as e:
            reason = e.reason if isinstance(e, VideoError) else Reason.SYMLINK_LOOP if isinstance(e, RuntimeError) else Reason.BAD_PATH
            detail = e.detail if isinstance(e, VideoError) else f"{printable(raw)}: {e}"
            rejects.append(Rejection(printable(raw), "source", reason.value, f"record {n}: {detail}", key_for_path(printable(raw))))
            continue
        source = str(path)
        rel = _rel(path, raw, base)
        if outside:
            rejects.append(Rejection(source, "source", Reason.OUTSIDE_ALLOWED_ROOTS.value, outside, key_for_path(rel)))
            continue
        if group:
            key = by_source.get(source) or key_for_path(rel)
            task = tasks.get(key)
            if task is None:
                task = tasks[key] = VideoTask(key, source, {"video_rel": rel, "conversations": []})
                by_source[source] = key
            task.meta["conversations"].append({k: v for k, v in rec.items() if k not in PATH_FIELDS})
            continue
        key = sanitize_key(str(rec["id"])) if rec.get("id") not in (None, "") else key_for_path(rel)
        if key in tasks:
            first = tasks[key].source
            rejects.append(Rejection(source, "source", Reason.DUPLICATE_KEY.value, f"key {key} already taken by {first}", key))
            continue
        try:
            tasks[key] = VideoTask(key, source, _manifest_meta(rec, rel, max_frames))
        except (ValueError, TypeError) as e:
            rejects.append(Rejection(source, "source", Reason.BAD_SOURCE.value, f"record {n}: {e}", key))
    return list(tasks.values()), rejects


def _manifest_meta(rec: dict[str, Any], rel: str, max_frames: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"video_rel": rel}
    extra = {k: v for k, v in rec.items() if k not in PATH_FIELDS and k not in ("id", "conversations", "num_frames")}
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
