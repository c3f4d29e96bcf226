"""The folder `prolongvid view` writes its site into: it touches only what a view wrote there.

A folder is taken when it is new, empty, or holds the marker (`.prolongvid-view`, JSON with a format version and the
list of files the last view wrote). Anything else is refused before a byte is written or removed. A re-view removes
and replaces only the listed files, so a file someone added inside is left alone (and one in the way of a new page
is refused). Sites from before the marker are taken only when every file in them is one the viewer writes and their
data.js is the viewer's. Nothing is followed through a symbolic link: not the folder itself, not a folder inside it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Iterable

MARKER = ".prolongvid-view"
MARKER_NEW = MARKER + ".new"  # the marker being replaced; a leftover beside a marker is ours too
FORMAT = 1
TOP_FILES = ("index.html", "data.js", "index.js", "sample.js", "view.css")
_SITE_PATH = re.compile(r"^(?:index\.html|data\.js|index\.js|sample\.js|view\.css|pages/[^/]+\.html|frames/[^/]+/[^/]+)$")
_DATA_HEAD = b"window.VIEW_DATA="


class ViewError(ValueError):
    pass


def site_path(rel: str) -> bool:
    """Whether `rel` is a path the viewer writes (the marker may list nothing else)."""
    return bool(_SITE_PATH.match(rel)) and not any(part in ("", ".", "..") for part in rel.split("/"))


def _shown(out: Path, names: list[str], limit: int = 5) -> str:
    """What a folder holds, short: the first few names, folders marked with a slash."""
    items = [n + "/" if (out / n).is_dir() and not (out / n).is_symlink() else n for n in names[:limit]]
    more = f", +{len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(items) + more


def _legacy_files(out: Path) -> set[str] | None:
    """The files of a site written before the marker existed; None when anything in the folder is not one of them."""
    found: set[str] = set()
    for top, dirs, files in os.walk(out):
        base = Path(top).relative_to(out).as_posix()
        for name in dirs:
            rel = name if base == "." else f"{base}/{name}"
            if os.path.islink(os.path.join(top, name)) or not (rel in ("pages", "frames") or re.fullmatch(r"frames/[^/]+", rel)):
                return None
        for name in files:
            rel = name if base == "." else f"{base}/{name}"
            if os.path.islink(os.path.join(top, name)) or not site_path(rel):
                return None
            found.add(rel)
    try:
        with open(out / "data.js", "rb") as f:
            ours = f.read(len(_DATA_HEAD)) == _DATA_HEAD
    except OSError:
        ours = False
    return found if ours else None


class SiteDir:
    """One view's claim on its folder: what an earlier view wrote (`old`), what this one plans and writes."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.old = self._claim()
        self.planned: set[str] = set()
        self.written: set[str] = set()

    def _refuse(self, why: str) -> ViewError:
        return ViewError(f"{self.out} {why}: give a new or empty --out")

    def _claim(self) -> set[str]:
        out = self.out
        if out.is_symlink():
            raise self._refuse(f"is a symbolic link (to {os.readlink(out)}), not a folder of its own")
        if not out.exists():
            return set()
        if not out.is_dir():
            raise self._refuse("is not a folder")
        names = sorted(os.listdir(out))
        if not names:
            return set()
        if MARKER not in names:
            legacy = _legacy_files(out)
            if legacy is None:
                raise self._refuse(f"is not empty and holds no earlier site of `prolongvid view` (it holds {_shown(out, names)})")
            return legacy
        marker = out / MARKER
        try:
            if not stat.S_ISREG(marker.lstat().st_mode):
                raise ValueError("not a plain file")
            doc = json.loads(marker.read_text())
            files = doc["files"]
            if not isinstance(doc.get("format"), int) or doc["format"] > FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, this version reads {FORMAT}")
            if not isinstance(files, list) or not all(isinstance(f, str) and site_path(f) for f in files):
                raise ValueError("it lists a path the viewer does not write")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise self._refuse(f"holds a {MARKER} this version cannot trust ({e})") from None
        return set(files)

    def _real_parents(self, rel: str) -> bool:
        """Every folder on the way to `rel` inside out is a real folder or absent (never a link leading elsewhere)."""
        d = self.out
        for part in rel.split("/")[:-1]:
            d = d / part
            try:
                mode = d.lstat().st_mode
            except FileNotFoundError:
                return True
            if not stat.S_ISDIR(mode):
                return False
        return True

    def plan(self, paths: Iterable[str]) -> None:
        """Check, before anything is touched, that every file to remove or write is the viewer's and in place."""
        self.planned = set(paths)
        for rel in sorted(self.old | self.planned):
            if not site_path(rel):
                raise ViewError(f"{self.out}: {rel!r} is not a path of the site")
            if not self._real_parents(rel):
                raise self._refuse(f"holds a link or file where the folder of {rel} belongs")
        for rel in sorted(self.planned - self.old):
            if os.path.lexists(self.out / rel):
                raise self._refuse(f"holds {rel}, which no earlier view wrote")
        for rel in sorted(self.planned & self.old):
            if (self.out / rel).is_dir() and not (self.out / rel).is_symlink():
                raise self._refuse(f"holds a folder at {rel}, which an earlier view wrote as a file")

    def begin(self) -> None:
        """Claim the folder (marker listing old and planned files), then remove the old site's files."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._mark(self.old | self.planned)
        for rel in sorted(self.old):
            path = self.out / rel
            if os.path.lexists(path) and not (path.is_dir() and not path.is_symlink()):
                path.unlink()
        parents = {str(Path(rel).parent) for rel in self.old} - {"."}
        for rel in sorted(parents | {str(Path(p).parent) for p in parents} - {"."}, key=len, reverse=True):
            try:
                (self.out / rel).rmdir()  # only when empty: a user's file inside keeps its folder
            except OSError:
                pass

    def put(self, rel: str, data: str | bytes) -> None:
        """Write one planned file: new (O_EXCL), never through a link."""
        if rel not in self.planned:
            raise ViewError(f"{self.out}: {rel} was not planned")
        d = self.out
        for part in rel.split("/")[:-1]:
            d = d / part
            try:
                d.mkdir()
            except FileExistsError:
                if d.is_symlink() or not d.is_dir():
                    raise self._refuse(f"holds a link or file where the folder of {rel} belongs") from None
        if rel in self.written:
            (self.out / rel).unlink()
        fd = os.open(self.out / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        self.written.add(rel)

    def finish(self) -> None:
        """The marker lists exactly what this view wrote."""
        self._mark(self.written)

    def _mark(self, files: set[str]) -> None:
        doc = {"format": FORMAT, "written_by": "prolongvid view", "files": sorted(files)}
        new = self.out / MARKER_NEW
        if os.path.lexists(new):
            new.unlink()
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=0)
        os.replace(new, self.out / MARKER)
