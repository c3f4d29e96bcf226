"""A real S3 API server on loopback for the tests (moto's server mode: create-only PUTs, ranged GETs, multipart,
listing pages), reached through the same client code a user's bucket is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """Start the server, yield its endpoint URL, stop it (this process's child only)."""
    port = _free_port()
    log = open(workdir / "s3server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 test server did not start: {(workdir / 's3server.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                  if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
                 region_name="us-east-1").create_bucket(Bucket=name)


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment a process needs to reach the server: the standard variables, nothing in any config."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost", **({"HOME": os.environ["HOME"]} if "HOME" in os.environ else {})}


def upload_tree(local: Path, url: str) -> list[str]:
    """Every file under `local` put at the same relative name under `url` (what `aws s3 sync` does); the names."""
    from pipeline.core.storage import Storage

    bucket = Storage(url)
    names = []
    for path in sorted(local.rglob("*")):
        if path.is_file():
            names.append(str(path.relative_to(local)))
            bucket.put(names[-1], path.read_bytes())
    return names
