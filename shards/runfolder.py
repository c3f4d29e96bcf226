"""Which folders and files a run may touch: its marked run folder, and inside it only names it makes.

A run creates its folder or takes an empty one and writes `.ledger/run.marker.json` (a format version) before
anything else. A non-empty folder without the marker is someone else's: the run refuses it before touching it.
A folder made before the marker existed counts as a run folder when its `.ledger/` is valid (a readable
`generation`), and gets the marker on its next run. Every path the run deletes is checked here first: a bare name
of the run's own pattern, inside the run folder, not reached through a symlink.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from shards.layout import (EMBEDDINGS_FILE, INDEX_FILE, LEDGER_DIR, REJECTS_FILE, RUN_FILE, SHARDS_FILE,
                           TMP_SUFFIX, RunDir, check_key)
from shards.reader import NotARunDir

MARKER_FILE = "run.marker.json"
MARKER_FORMAT = 1
# A shard record names a bare tar file: no separator, no leading dot, so it can only name a file in shards/.
RECORD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,250}\.tar$")
# What the shard writer names its tars (shards/sink.py): prefix-stamp-task-uid[-eval]-seq, and a commit's rewrite.
WRITER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}-\d{14}-\d{5}-[0-9a-f]{8}(-eval)?-\d{3,}(\.rewrite)?\.tar$")
# Files a run writes in its root (config.resolved.yaml and the logs folder come from the config writer and the
# decode log), and its temporary names.
ROOT_FILES = (INDEX_FILE, REJECTS_FILE, RUN_FILE, SHARDS_FILE, EMBEDDINGS_FILE, "config.resolved.yaml")


class RefusedFolder(NotARunDir):
    """A folder or ledger a command must not touch (exit 2, nothing changed)."""


def writer_shard_name(prefix: str, stamp: str, task: int, uid: str, held_out: bool, seq: int) -> str:
    """The writer's tar name; `WRITER_NAME` is what a resume may remove when no record names it."""
    return f"{prefix}-{stamp}-{task:05d}-{uid}{'-eval' if held_out else ''}-{seq:03d}.tar"


def marker_path(run: RunDir) -> Path:
    return run.ledger / MARKER_FILE


def _legacy_ledger(run: RunDir) -> bool:
    """A run folder of a version before the marker: `.ledger/` with a readable generation."""
    try:
        text = (run.ledger / "generation").read_text().strip()
    except OSError:
        return False
    return text.isdigit() and not run.ledger.is_symlink()


def read_marker(run: RunDir) -> dict[str, Any] | None:
    try:
        doc = json.loads(marker_path(run).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("tool") == "prolongvid" else None


def is_marked(run: RunDir) -> bool:
    return read_marker(run) is not None or _legacy_ledger(run)


def _listing(path: Path, limit: int = 5) -> str:
    names = sorted(os.listdir(path))
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown


def check_layout(run: RunDir, what: str = "output.dir") -> None:
    """The run's own folders are folders, not links elsewhere: nothing is ever written or deleted through one."""
    for sub in (run.ledger, run.ledger_shards, run.ledger_rejects, run.ledger / "keys", run.shards):
        if sub.is_symlink():
            raise RefusedFolder(f"{what}: {sub} is a symlink: a run folder's {sub.relative_to(run.root)} must be its "
                                "own folder")


def _unfinished_claim(root: Path) -> bool:
    """Only what a run killed while taking the folder leaves: an empty `.ledger/`, or one with the marker's
    temporary file."""
    entries = os.listdir(root)
    if entries != [LEDGER_DIR] or (root / LEDGER_DIR).is_symlink() or not (root / LEDGER_DIR).is_dir():
        return False
    return set(os.listdir(root / LEDGER_DIR)) <= {MARKER_FILE + TMP_SUFFIX}


def claim(run: RunDir, what: str = "output.dir") -> bool:
    """Take the run folder: create it, or take an empty one, or accept a marked one; True if it held nothing.

    Anything else raises RefusedFolder before a byte is written. The marker is written at once, so a run killed
    right after still leaves a folder its rerun recognises.
    """
    root = run.root
    if root.is_symlink():
        raise RefusedFolder(f"{what}: {root} is a symlink (to {os.path.realpath(root)}): give the folder itself")
    if root.exists() and not root.is_dir():
        raise RefusedFolder(f"{what}: {root} is a file, not a folder")
    fresh = not root.exists() or not any(root.iterdir()) or _unfinished_claim(root)
    if not fresh and not is_marked(run):
        raise RefusedFolder(f"{what}: {root} is not empty and is not a run folder (holds {_listing(root)}): "
                            "give a new or empty folder, or the folder of an earlier run")
    check_layout(run, what)
    if read_marker(run) is None:
        run.ledger.mkdir(parents=True, exist_ok=True)
        doc = {"tool": "prolongvid", "format": MARKER_FORMAT,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = marker_path(run).with_name(MARKER_FILE + TMP_SUFFIX)
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, marker_path(run))
    return fresh


def release_unused(run: RunDir, made: bool) -> None:
    """Undo `claim` for a run that wrote nothing (its LLM server never came up): the marker and the ledger go
    when nothing else is in the folder (a server log keeps it a run folder); the folder goes if the run made it."""
    run.lock.unlink(missing_ok=True)
    if set(os.listdir(run.root)) - {LEDGER_DIR}:
        return
    if set(os.listdir(run.ledger)) <= {MARKER_FILE}:
        marker_path(run).unlink(missing_ok=True)
        run.ledger.rmdir()
    if made:
        try:
            run.root.rmdir()
        except OSError:
            pass


def check_record(run: RunDir, record: dict[str, Any], file_name: str | None = None) -> None:
    """A shard record a resume may act on: a bare tar name of the run, its rows' keys safe; RefusedFolder if not."""
    name = record.get("name")
    where = f"{LEDGER_DIR}/shards/{file_name or name}"
    if not isinstance(name, str) or not RECORD_NAME.fullmatch(name):
        raise RefusedFolder(f"{run.root}: {where} names shard {name!r}, not a tar file of this run: the ledger was "
                            "altered; nothing was changed (restore it or start a new run folder)")
    if file_name is not None and file_name != name + ".json":
        raise RefusedFolder(f"{run.root}: {where} is the record of {name!r}: the ledger was altered; nothing was changed")
    rows = record.get("rows")
    if not isinstance(rows, list):
        raise RefusedFolder(f"{run.root}: {where} has no rows: the ledger was altered; nothing was changed")
    for row in rows:
        key = row.get("key") if isinstance(row, dict) else None
        try:
            check_key(key if isinstance(key, str) else "")
        except ValueError:
            raise RefusedFolder(f"{run.root}: {where} holds key {key!r}, not a key this run makes: the ledger was "
                                "altered; nothing was changed") from None


def _homes(run: RunDir) -> set[Path]:
    """The folders a run deletes in, resolved once per batch."""
    return {d.resolve() for d in (run.root, run.shards, run.ledger, run.ledger_shards, run.ledger_rejects)}


def own_file(run: RunDir, path: Path, homes: set[Path] | None = None) -> Path:
    """`path` if the run may delete it: a regular file (or none) directly in the run folder, its shards/ or its
    ledger, not a symlink; RefusedFolder otherwise."""
    parent = path.parent
    if parent.resolve() not in (homes or _homes(run)) or path.is_symlink() or parent.is_symlink() \
            or path.name in ("", ".", ".."):
        raise RefusedFolder(f"{path} is not a file of the run in {run.root}: refusing to delete it")
    if path.exists() and not path.is_file():
        raise RefusedFolder(f"{path} is not a regular file: refusing to delete it")
    return path


def check_own(run: RunDir, paths: Iterable[Path]) -> list[Path]:
    """Every path checked by `own_file`, before any is removed."""
    homes = _homes(run)
    return [own_file(run, p, homes) for p in paths]


def remove_own(run: RunDir, paths: Iterable[Path]) -> int:
    """Delete files of the run, all checked by `own_file` first; returns how many were there."""
    n = 0
    for p in check_own(run, paths):
        try:
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def is_run_temp(name: str, recorded: set[str]) -> bool:
    """A temporary file the run (or a dedup, or a commit's rewrite) left in its root or shards/."""
    if not name.endswith(TMP_SUFFIX):
        return False
    base = name[: -len(TMP_SUFFIX)]
    return base in ROOT_FILES or base in recorded or bool(WRITER_NAME.fullmatch(base))
