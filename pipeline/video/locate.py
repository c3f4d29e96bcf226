"""Where a source's video is: a manifest row or folder entry resolved to a local path or URL, confined to
`input.allowed_roots`, with the stable key derived from it.

Kept apart from reading the inputs (`sources.py`) because this is the one place that decides whether a video
may be read at all: symlinks followed, `..` refused under a URL, anything outside the allowed roots rejected.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import Reason, VideoError
from pipeline.core.records import Rejection
from pipeline.core.redact import public_url
from pipeline.video.opened import local_roots, url_prefixes
from pipeline.video.paths import check_path_text

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


def printable(path: str) -> str:
    """A path as storable text: bytes that are not UTF-8 shown as escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _video_field(rec: dict[str, Any]) -> str | None:
    for name in PATH_FIELDS:
        value = rec.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


@dataclass(frozen=True)
class Bounds:
    """input.allowed_roots split by kind: folders for local videos, URL prefixes for remote ones. Set at all
    (`confined`): a video under none of them is refused, whichever kind it is."""

    confined: bool = False
    folders: tuple[Path, ...] = ()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, roots: list[str]) -> "Bounds":
        return cls(bool(roots), tuple(Path(r).resolve() for r in local_roots(roots)), url_prefixes(roots))


def base_of(root: str) -> Path | str:
    return root.rstrip("/") if "://" in root else Path(root).resolve()


def _resolve_url(raw: str, base: Path | str) -> str:
    """A row's video as a URL: itself, or joined to a remote base; `..` may not climb out of the base."""
    if "://" in raw:
        return raw
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{raw}: '..' in a path under a URL")
    return f"{base}/{'/'.join(parts)}"


def _resolve(raw: str, base: Path | str, allowed: Bounds) -> tuple[Path | str, str | None]:
    if "://" in raw or isinstance(base, str):
        url = _resolve_url(raw, base)
        if not url.startswith(("s3://", "gs://", "az://", "abfs://", "azure://", "http://", "https://")):
            raise ValueError(f"{raw}: not a supported URL (s3://, gs://, az://, http(s)://)")
        if allowed.confined and not url.startswith(allowed.prefixes or ("\0",)):
            return url, f"{raw} is {url}, outside input.allowed_roots"
        return url, None
    path = (base / raw).resolve() if not Path(raw).is_absolute() else Path(raw).resolve()
    if allowed.confined and not any(path.is_relative_to(root) for root in allowed.folders):
        return path, f"{raw} resolves to {path}, outside input.allowed_roots"
    return path, None


def _rel(path: Path | str, raw: str, base: Path | str) -> str:
    if isinstance(path, str):  # a URL: relative to a remote base when under it
        return path[len(str(base)) + 1:] if isinstance(base, str) and path.startswith(f"{base}/") else path
    try:
        return str(path.relative_to(base))
    except ValueError:
        return raw


def locate(rec: Any, n: int, base: Path | str, allowed: Bounds) -> tuple[str, str] | Rejection:
    """Record `n`'s video as (resolved source, path relative to the base), or the reject saying why not."""
    raw = _video_field(rec) if isinstance(rec, dict) else None
    if raw is None:
        why = rec.get("_bad") if isinstance(rec, dict) else None
        return Rejection(f"record {n}", "source", Reason.BAD_SOURCE.value, why or f"no {'/'.join(PATH_FIELDS)} field")
    try:
        check_path_text(raw)
        path, outside = _resolve(raw, base, allowed)
    except (VideoError, RuntimeError, OSError, ValueError) as e:
        reason = e.reason if isinstance(e, VideoError) else Reason.SYMLINK_LOOP if isinstance(e, RuntimeError) else Reason.BAD_PATH
        detail = e.detail if isinstance(e, VideoError) else f"{printable(raw)}: {e}"
        return Rejection(printable(raw), "source", reason.value, f"record {n}: {detail}", key_for_path(printable(raw)))
    source, rel = str(path), _rel(path, raw, base)
    if isinstance(path, str):
        rel = public_url(rel)  # keys and `video_rel` never carry a URL's signature
    if outside:
        return Rejection(source, "source", Reason.OUTSIDE_ALLOWED_ROOTS.value, outside, key_for_path(rel))
    return source, rel
