"""A real HTTP server on loopback for the URL-list tests: serves a folder with Range and ETag support, and can
answer a path with a run of failure statuses, reset connections, or redirect it (the faults a CDN gives)."""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from fixtures.loopback import loopback_server


class Faults:
    def __init__(self) -> None:
        self.statuses: dict[str, list[int]] = {}  # path -> statuses to answer first, one per request
        self.resets: dict[str, int] = {}  # path -> requests to cut mid-body
        self.redirects: dict[str, str] = {}  # path -> Location
        self.requests: list[tuple[str, str]] = []  # (path, Range header)
        self.signed: dict[str, str] = {}  # path -> the X-Amz-Signature a request must carry (else 403), as S3 checks


def _handler(root: Path, faults: Faults):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802
            path = self.path.split("?")[0]
            faults.requests.append((path, self.headers.get("Range", "")))
            if path in faults.redirects:
                self.send_response(302)
                self.send_header("Location", faults.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in faults.signed and f"X-Amz-Signature={faults.signed[path]}" not in self.path.partition("?")[2]:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            pending = faults.statuses.get(path)
            if pending:
                self.send_response(pending.pop(0))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            file = root / path.lstrip("/")
            if not file.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = file.read_bytes()
            etag = '"' + hashlib.md5(data).hexdigest() + '"'
            start, end, status = 0, len(data), 200
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if m:
                start, end, status = int(m.group(1)), min(len(data), int(m.group(2) or len(data) - 1) + 1), 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            body = data[start:end]
            if faults.resets.get(path, 0) > 0:
                faults.resets[path] -= 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.close()  # the rest never comes: the client sees a short body
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def http_server(root: Path) -> Iterator[tuple[str, Faults]]:
    faults = Faults()
    with loopback_server(_handler(root, faults)) as url:
        yield url, faults
