"""Node-local scratch folders named by the process that made them: a killed process leaves its folder, and the
next command that uses that kind of scratch on the node removes every such folder of this user whose process is
gone (and nothing else: only names of its own pattern, only this user's)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: its folder is not ours to judge
    return True


def sweep_stale(prefix: str, folder: str | Path | None = None) -> list[str]:
    """Remove `<prefix><pid>-*` folders in `folder` (the temp dir) whose process died; returns them."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[A-Za-z0-9_]+$")
    base = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        try:
            mine = m and entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
        except OSError:
            continue
        if mine and not _alive(int(m.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def scratch_dir(prefix: str, folder: str | Path | None = None) -> tempfile.TemporaryDirectory:
    """A new scratch folder of this process (removed when the context ends), after sweeping dead ones."""
    sweep_stale(prefix, folder)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=folder)
