"""Which decord build is installed, and whether it is the one proven exact: read from package metadata.

Kept apart from the decoder so that config validation can ask without importing decord or the video stack.
"""

from __future__ import annotations

import importlib.metadata

TRUSTED_VERSION = "0.6.0"


def decord_problem() -> str | None:
    """Why the installed decord cannot be used (None: it is the version proven exact), without importing it."""
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    forks = [f"{d} {v}" for d in ("decord2", "eva-decord") if (v := version(d))]
    if forks:
        return (f"{forks[0]} is installed, not decord {TRUSTED_VERSION}, the only build proven exact (decord2 3.4 "
                f"returns wrong frames without an error on a busy machine): pip uninstall {forks[0].split()[0]}; "
                f"pip install 'prolongvid[decord]'")
    found = version("decord")
    if found is None:
        return f"decord is not installed: pip install 'prolongvid[decord]' (decord {TRUSTED_VERSION}, x86-64 only)"
    if found != TRUSTED_VERSION:
        return f"decord {found} is installed; only {TRUSTED_VERSION} is proven exact: pip install 'prolongvid[decord]'"
    return None
