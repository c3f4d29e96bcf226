"""A run folder read where it lives: on disk as it is, on an object store with its tables copied to a temporary
folder and its shards read in place (streamed, or by byte range). `stats`, `view`, `audit` and `export-llava`
read a run through this, so a URL run folder answers as the same run on disk does."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from pipeline.core.storage import Storage, is_remote
from shards.layout import SHARDS_DIR, RunDir
from shards.reader import open_run
from shards.remote import RangedFile, mirror_tables, open_stream, shard_url


@dataclass(frozen=True)
class Tars:
    """A run's shards/: every tar there with its size, how to read one front to back, how to open one for
    seeking (a local file, or ranged requests), and the location a reader such as webdataset opens."""

    sizes: dict[str, int]
    open: Callable[[str], BinaryIO]
    open_seekable: Callable[[str], BinaryIO]
    location: Callable[[str], str]


def local_tars(run: RunDir) -> Tars:
    sizes = {p.name: p.stat().st_size for p in run.shards.glob("*.tar")} if run.shards.is_dir() else {}

    def opened(name: str) -> BinaryIO:
        return open(run.shards / name, "rb")

    return Tars(sizes, opened, opened, lambda name: str(run.shards / name))


def remote_tars(root: str) -> Tars:
    """A remote run's shards/: each tar's size from the listing, read as a stream or by ranged requests."""
    store = Storage(root)
    prefix = f"{SHARDS_DIR}/"
    sizes = {info.path[len(prefix):]: info.size for page in store.list_pages(prefix) for info in page
             if info.path.endswith(".tar") and "/" not in info.path[len(prefix):]}
    return Tars(sizes, lambda name: open_stream(shard_url(root, name)),
                lambda name: io.BufferedReader(RangedFile(shard_url(root, name))), lambda name: shard_url(root, name))


@contextmanager
def reading_run(location: str | Path) -> Iterator[tuple[RunDir, Tars]]:
    """The run's tables as a `RunDir` and its shards as `Tars`; a remote run's table copies are removed after."""
    if not is_remote(location):
        run = open_run(location)
        yield run, local_tars(run)
        return
    with tempfile.TemporaryDirectory(prefix="prolongvid-run-") as tmp:
        yield open_run(mirror_tables(str(location), Path(tmp))), remote_tars(str(location))
