"""One storage seam: a local folder or an object-store prefix (`s3://`, `gs://`, `az://`) behind the same calls,
so what reads and writes runs, sources and shards does it the same way wherever the data lives.

Built on obstore (Rust's object_store): create-only writes (`If-None-Match: *` on S3, GCS, R2 and MinIO; an
exclusive create on a local disk), ranged reads, multipart uploads and retries with backoff on 5xx, throttling
and connection resets are the library's, the same for every store. Credentials and endpoints come from the
provider's own chain (the `AWS_*` environment variables, `AWS_ENDPOINT_URL` for an S3-compatible server; with
boto3 installed, its whole chain: shared config files, instance roles), never from a config file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

REMOTE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "azure://")
# The client's runtime (tokio) does not survive a fork: a process forked after its parent used the store would
# hang on its first call. The pid that started it is kept, so a forked child fails with a message instead.
_RUNTIME_PID: int | None = None


# 5xx, throttling (503 SlowDown), resets and timeouts are retried with exponential backoff and jitter: more
# patiently than the library's default (10 tries, a few seconds), so a store that throttles a busy cluster for a
# while slows the run down instead of failing its writes.
RETRY = {"max_retries": 15, "retry_timeout": timedelta(minutes=10),
         "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=20), "base": 2.0}}


class StorageError(Exception):
    """A store refused or failed a call after the library's retries; the message names the object."""


class AlreadyExists(StorageError):
    """A create-only write found the object there: someone else created it first."""


class NotFound(StorageError):
    """No object at that path."""


class Conflict(StorageError):
    """A conditional replace (`if_match`) found another version there: someone else wrote it in between."""


@dataclass(frozen=True)
class ObjectInfo:
    path: str  # relative to the storage's root, "/"-separated
    size: int
    etag: str  # the store's version tag ("" where it has none): a changed object has a new one
    modified_ns: int


def is_remote(location: str | Path) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def _s3_options(url: str) -> dict[str, Any]:
    """The S3 endpoint and credentials from the standard chain: boto3's when installed (it reads the shared config
    files and instance roles too), else object_store's own reading of the `AWS_*` variables."""
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and endpoint.startswith("http://"):
        options["client_options"] = {"allow_http": True}  # an S3-compatible server without TLS (loopback, MinIO)
    try:
        import boto3  # noqa: F401
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return options
    if not os.environ.get("AWS_ACCESS_KEY_ID"):  # object_store reads explicit keys itself; boto3 for the rest
        options["credential_provider"] = Boto3CredentialProvider()
    return options


class Storage:
    """A root (a local folder or a bucket prefix) and the calls every reader and writer of the project needs."""

    def __init__(self, root: str | Path):
        from obstore.store import LocalStore, from_url

        self.root = str(root).rstrip("/") if is_remote(root) else str(Path(root).resolve())
        self.remote = is_remote(root)
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self._store = LocalStore(self.root)
        else:
            self._store = from_url(self.root, retry_config=RETRY,
                                   **(_s3_options(self.root) if self.root.startswith("s3://") else {}))

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def url(self, path: str) -> str:
        """Where `path` lives, for messages and for readers that take URLs (webdataset, Ray Data)."""
        return f"{self.root}/{path}"

    def _call(self, what: str, path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        _check_not_forked(self.url(path))
        try:
            return fn(self._store, path, *args, **kwargs)
        except AlreadyExistsError:
            raise AlreadyExists(f"{self.url(path)} already exists") from None
        except PreconditionError:
            raise Conflict(f"{self.url(path)} changed since it was read") from None
        except (NotFoundError, FileNotFoundError):
            raise NotFound(f"{self.url(path)}: no such object") from None
        except Exception as e:  # the library retried already: name the call and the object
            raise StorageError(f"{what} {self.url(path)}: {type(e).__name__}: {e}") from e

    def put(self, path: str, data: bytes | Path, create_only: bool = False, if_match: str = "") -> str:
        """Write `data` (bytes, or a local file streamed up in parts when large) whole: a reader never sees part of
        it. `create_only` raises `AlreadyExists` instead of replacing an object that is there (a commit point);
        `if_match` replaces only the version with that ETag, else raises `Conflict` (a lease's compare-and-swap).
        Returns the new version's ETag ("" where the store has none)."""
        import obstore

        mode: Any = {"e_tag": if_match} if if_match else "create" if create_only else "overwrite"
        result = self._call("put", path, obstore.put, data, mode=mode)
        return str((result or {}).get("e_tag") or "")

    def get_versioned(self, path: str) -> tuple[bytes, str]:
        """An object's bytes and the ETag of that version (for a later `put(..., if_match=etag)`)."""
        import obstore

        result = self._call("get", path, obstore.get)
        return bytes(result.bytes()), str(result.meta.get("e_tag") or "")

    def get(self, path: str) -> bytes:
        import obstore

        return bytes(self._call("get", path, obstore.get).bytes())

    def stream(self, path: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """An object's bytes in chunks of about `chunk_size`, never whole in memory."""
        import obstore

        result = self._call("get", path, obstore.get)
        try:
            for chunk in result.stream(min_chunk_size=chunk_size):
                yield bytes(chunk)
        except Exception as e:  # the body broke off after the library's retries
            raise StorageError(f"get {self.url(path)}: {type(e).__name__}: {e}") from e

    def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object: one ranged request, not the whole object."""
        import obstore

        if end <= start:
            return b""
        return bytes(self._call("get_range", path, obstore.get_range, start=start, end=end))

    def head(self, path: str) -> ObjectInfo:
        import obstore

        return _info(self._call("head", path, obstore.head))

    def exists(self, path: str) -> bool:
        try:
            self.head(path)
        except NotFound:
            return False
        return True

    def delete(self, path: str) -> None:
        """Remove one object; one that is gone already is not an error (a retried cleanup)."""
        import obstore

        try:
            self._call("delete", path, obstore.delete)
        except NotFound:
            pass

    def list_pages(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        """The objects under `prefix`, a page at a time as the store returns them (a million objects never sit in
        memory at once); each page sorted by path."""
        import obstore

        _check_not_forked(self.url(prefix))
        try:
            for page in obstore.list(self._store, prefix=prefix or None):
                yield sorted((_info(meta) for meta in page), key=lambda info: info.path)
        except FileNotFoundError:  # a local prefix that does not exist yet: nothing under it
            return


    def abort_uploads(self, prefix: str, ours: Callable[[str], bool]) -> int | None:
        """Abort the unfinished multipart uploads under `prefix` whose object name (after the prefix) `ours`
        accepts: a writer killed mid-upload leaves parts no listing shows and the bucket still bills. S3 through
        boto3 (its client reads the same endpoint and credentials); None where that cannot be done here (another
        store, or no boto3: a bucket lifecycle rule that aborts incomplete uploads does the same)."""
        if not self.root.startswith("s3://"):
            return None
        try:
            import boto3
        except ImportError:
            return None
        bucket, _, key_prefix = self.root[len("s3://"):].partition("/")
        full = f"{key_prefix}/{prefix}" if key_prefix else prefix
        client = boto3.client("s3")
        aborted = 0
        try:
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=full):
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(full):]
                    if "/" not in name and ours(name):
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted += 1
        except Exception as e:  # boto3's ClientError and connection errors alike, after its own retries
            raise StorageError(f"abort uploads under {self.url(prefix)}: {type(e).__name__}: {e}") from e
        return aborted


def _check_not_forked(url: str) -> None:
    global _RUNTIME_PID
    pid = os.getpid()
    if _RUNTIME_PID is None:
        _RUNTIME_PID = pid
    elif _RUNTIME_PID != pid:
        raise StorageError(f"{url}: this process was forked after its parent used the object store, whose client "
                           "does not survive a fork; start it with spawn or forkserver, or read in the parent "
                           "through `in_fresh_process`")


def in_fresh_process(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a spawned process, so this one never starts the store's client: for a parent that reads a
    little (a shard list, an index) and then forks workers that read the rest."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _info(meta: dict[str, Any]) -> ObjectInfo:
    modified = meta.get("last_modified")
    return ObjectInfo(path=str(meta["path"]), size=int(meta["size"]), etag=str(meta.get("e_tag") or ""),
                      modified_ns=int(modified.timestamp() * 1e9) if modified else 0)
