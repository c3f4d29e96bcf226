"""A source opened once, checked on its descriptor, and read through that descriptor by every reader.

A path checked when the sources were listed may name another file by the time
a probe or a decoder opens it: a folder swapped for a symlink to an outside
folder, a file replaced. So each reader opens the source here: the real path
of the open file (read from `/proc/self/fd/N`, what the kernel opened, not
what the name says now) is checked against `input.allowed_roots`, its
identity (device, inode, size, mtime) against what the probe recorded, and
the readers open `/proc/self/fd/N`, a link to that same open file (ffprobe
and ffmpeg get the descriptor through `pass_fds`). No name is opened twice and
nothing is copied.

A hard link inside the roots to a file outside them is that outside file, and
no path says so; with `allowed_roots` set, a file with more than one name is
refused (`hard_link`) unless `input.allow_hard_links` accepts it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.video.config_video import InputConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.video.paths import check_path_text, check_regular_file, check_stat_regular, os_error

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK  # no blocking open (a fifo), no terminal taken


def url_prefixes(roots: list[str]) -> tuple[str, ...]:
    """The allowed roots that are URL prefixes (s3://bucket/prefix/, https://host/prefix/): remote videos."""
    return tuple(r for r in roots if "://" in r)


def local_roots(roots: list[str]) -> list[str]:
    """The allowed roots that are folders: local videos."""
    return [r for r in roots if "://" not in r]


@dataclass(frozen=True)
class SourceRules:
    """Where local sources may live. Not `confined`: anywhere (files are still read through one descriptor);
    confined with no folder (only URL prefixes allowed): no local file at all."""

    allowed_roots: tuple[str, ...] = ()  # resolved when the run starts, so every worker checks the same folders
    allow_hard_links: bool = False
    confined: bool = False  # input.allowed_roots is set

    @classmethod
    def from_roots(cls, roots: list[str], allow_hard_links: bool = False) -> "SourceRules":
        return cls(tuple(str(Path(r).resolve()) for r in local_roots(roots)), allow_hard_links, bool(roots))

    @classmethod
    def from_input(cls, cfg: InputConfig) -> "SourceRules":
        return cls.from_roots(cfg.allowed_roots, cfg.allow_hard_links)

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any]) -> "SourceRules":
        """The rules of a run's recorded config (`run.json`), for commands that re-read its sources."""
        section = cfg.get("input") or {}
        return cls.from_roots(section.get("allowed_roots") or [], bool(section.get("allow_hard_links", False)))


@dataclass(frozen=True)
class Identity:
    """Which file: a replaced file differs in inode or device, a rewritten one in size or mtime."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def as_list(self) -> list[int]:
        return [self.dev, self.ino, self.size, self.mtime_ns]

    @classmethod
    def from_list(cls, value: Any) -> "Identity | None":
        """The identity a probe recorded, or None when there is none (a hand-made or older record)."""
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            return None
        return cls(*(int(v) for v in value))

    def differences(self, other: "Identity") -> list[str]:
        return [f"{name} {getattr(self, name)} -> {getattr(other, name)}"
                for name in ("dev", "ino", "size", "mtime_ns") if getattr(self, name) != getattr(other, name)]


@dataclass(frozen=True)
class OpenedSource:
    """An open source: read it by `path` in this process, or hand `pass_fds` and `path` to a child process."""

    fd: int
    name: str  # the path it was opened by (what rejects and logs show)
    real: str  # the real path of the open file
    identity: Identity

    @property
    def path(self) -> str:
        """The open file itself: in this process, or in a child given `pass_fds` (the fd keeps its number)."""
        return f"/proc/self/fd/{self.fd}"

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.fd,)

    def shown(self, text: str) -> str:
        """`text` with the descriptor's path written as the source's name."""
        return re.sub(re.escape(self.path) + r"(?!\d)", lambda _: self.name, text)


def _confine(real: str, st: os.stat_result, name: str, rules: SourceRules) -> None:
    if not rules.confined:
        return
    if not any(Path(real).is_relative_to(root) for root in rules.allowed_roots):
        raise VideoError(Reason.OUTSIDE_ALLOWED_ROOTS, f"{name} opens {real}, outside input.allowed_roots")
    if st.st_nlink > 1 and not rules.allow_hard_links:
        raise VideoError(Reason.HARD_LINK, f"{name} has {st.st_nlink} names (hard links): it may be a file from outside "
                         "input.allowed_roots, which no path shows (input.allow_hard_links accepts it)")


@contextmanager
def open_source(path: str | Path, rules: SourceRules | None = None,
                expect: Identity | None = None) -> Iterator[OpenedSource]:
    """Open `path` once and check the open file: a regular file, readable, inside `rules.allowed_roots` (its real
    path, whatever the name says now), not a hard link unless allowed, and the file `expect` names if given.

    VideoError with the specific reason otherwise; the descriptor is closed when the block ends.
    """
    name = str(path)
    check_regular_file(name)  # the specific reason for what is plainly not a file, before anything opens it
    try:
        fd = os.open(name, _FLAGS)
    except OSError as e:
        raise os_error(name, e) from None
    try:
        st = os.fstat(fd)
        check_stat_regular(name, st)  # what the name held when it was opened, not when it was listed
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            os.pread(fd, 1, 0)  # permissions and I/O errors show here, not inside a decoder
        except OSError as e:
            raise VideoError(Reason.UNREADABLE, f"{name}: {e.strerror or e}") from None
        if st.st_nlink == 0:
            raise VideoError(Reason.MISSING, f"{name} was removed as it was opened")
        check_path_text(real)
        _confine(real, st, name, rules or SourceRules())
        identity = Identity.of(st)
        if expect is not None and identity != expect:
            raise VideoError(Reason.SOURCE_CHANGED, f"{name} is not the file the probe read "
                             f"({', '.join(expect.differences(identity))})")
        yield OpenedSource(fd, name, real, identity)
    finally:
        os.close(fd)
