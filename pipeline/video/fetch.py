"""A remote video (an object-store URL, or an `http(s)://` URL when allowed) copied to node-local scratch, bounded
and checked, for the decoders that read files.

The copy is refused before a byte is read when the listed or announced size is over `max_bytes`, and stopped
when the body grows past it; a size or version tag (ETag) that differs from the listing's is a changed source;
transient failures (5xx, 429 throttling, connection resets, timeouts) are retried with exponential backoff.
Object stores go through the storage seam (its library retries); HTTP through urllib3 with redirects followed
by hand, each hop checked against the allowed prefixes, so a redirect never leaves them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from pipeline.core.errors import Reason, VideoError
from pipeline.core.storage import NotFound, Storage, StorageError, is_remote
from pipeline.video.config_video import FetchConfig

CHUNK = 1 << 20
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Fetched:
    path: Path
    bytes: int
    attempts: int


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def fetch(url: str, dest: Path, limits: FetchConfig, expected_size: int | None = None, expected_etag: str = "",
          allowed_prefixes: tuple[str, ...] = ()) -> Fetched:
    """Copy `url` to `dest` (a file in this worker's scratch). Raises `VideoError` with `fetch_too_large`,
    `fetch_failed` (the HTTP status or the store's error in the detail) or `source_changed`."""
    if is_http(url):
        return _fetch_http(url, dest, limits, expected_size, expected_etag, allowed_prefixes)
    if is_remote(url):
        return _fetch_object(url, dest, limits, expected_size, expected_etag)
    raise ValueError(f"not a remote URL: {url!r}")


def _check_announced(url: str, size: int | None, etag: str, limits: FetchConfig, expected_size: int | None,
                     expected_etag: str) -> None:
    if size is not None and size > limits.max_bytes:
        raise VideoError(Reason.FETCH_TOO_LARGE, f"{url}: {size} bytes > input.fetch.max_bytes {limits.max_bytes}")
    if expected_size is not None and size is not None and size != expected_size:
        raise VideoError(Reason.SOURCE_CHANGED, f"{url}: {size} bytes, the listing said {expected_size}")
    if expected_etag and etag and etag != expected_etag:
        raise VideoError(Reason.SOURCE_CHANGED, f"{url}: ETag {etag}, the listing said {expected_etag}")


def _write_chunks(url: str, dest: Path, chunks, limits: FetchConfig) -> int:
    written = 0
    with open(dest, "wb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > limits.max_bytes:
                raise VideoError(Reason.FETCH_TOO_LARGE, f"{url}: more than input.fetch.max_bytes {limits.max_bytes}")
            out.write(chunk)
    return written


def _fetch_object(url: str, dest: Path, limits: FetchConfig, expected_size: int | None,
                  expected_etag: str) -> Fetched:
    root, _, name = url.rpartition("/")
    storage = Storage(root)
    try:
        info = storage.head(name)
        _check_announced(url, info.size, info.etag, limits, expected_size, expected_etag)
        written = _write_chunks(url, dest, storage.stream(name, CHUNK), limits)  # the library retries
    except NotFound as e:
        raise VideoError(Reason.FETCH_FAILED, f"{e} (404)") from None
    except StorageError as e:
        dest.unlink(missing_ok=True)
        raise VideoError(Reason.FETCH_FAILED, str(e)[:300]) from None
    except VideoError:
        dest.unlink(missing_ok=True)
        raise
    if written != info.size:
        dest.unlink(missing_ok=True)
        raise VideoError(Reason.FETCH_FAILED, f"{url}: {written} bytes read, the store said {info.size}")
    return Fetched(dest, written, 1)


def _fetch_http(url: str, dest: Path, limits: FetchConfig, expected_size: int | None, expected_etag: str,
                allowed_prefixes: tuple[str, ...]) -> Fetched:
    import urllib3

    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=min(30.0, limits.timeout_s),
                                                                        read=limits.timeout_s))
    last = ""
    for attempt in range(limits.retries + 1):
        if attempt:
            time.sleep(limits.backoff_s * 2 ** (attempt - 1))
        try:
            return _http_once(pool, url, dest, limits, expected_size, expected_etag, allowed_prefixes, attempt + 1)
        except VideoError:
            dest.unlink(missing_ok=True)
            raise
        except _Transient as e:
            last = str(e)
        except (urllib3.exceptions.HTTPError, OSError) as e:  # reset, refused, timed out, cut body
            last = f"{url}: {type(e).__name__}: {e}"
        dest.unlink(missing_ok=True)
    raise VideoError(Reason.FETCH_FAILED, f"{last[:300]} (after {limits.retries + 1} attempts)")


class _Transient(Exception):
    """A status worth retrying (5xx, 429)."""


def _http_once(pool, url: str, dest: Path, limits: FetchConfig, expected_size: int | None, expected_etag: str,
               allowed_prefixes: tuple[str, ...], attempt: int) -> Fetched:
    here = url
    for _ in range(MAX_REDIRECTS + 1):
        if allowed_prefixes and not here.startswith(allowed_prefixes):
            raise VideoError(Reason.OUTSIDE_ALLOWED_ROOTS, f"{url}: redirected to {here}, outside input.allowed_roots")
        response = pool.request("GET", here, preload_content=False, redirect=False)
        try:
            if response.status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                here = urljoin(here, response.headers["Location"])
                continue
            if response.status in RETRY_STATUS:
                raise _Transient(f"{here}: HTTP {response.status}")
            if response.status != 200:
                raise VideoError(Reason.FETCH_FAILED, f"{here}: HTTP {response.status}")
            length = response.headers.get("Content-Length")
            _check_announced(url, int(length) if length and length.isdigit() else None,
                             response.headers.get("ETag", ""), limits, expected_size, expected_etag)
            written = _write_chunks(url, dest, response.stream(CHUNK), limits)
            if length and length.isdigit() and written != int(length):
                raise _Transient(f"{here}: {written} of {length} bytes")
            return Fetched(dest, written, attempt)
        finally:
            response.release_conn()
    raise VideoError(Reason.FETCH_FAILED, f"{url}: more than {MAX_REDIRECTS} redirects")
