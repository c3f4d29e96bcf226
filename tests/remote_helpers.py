"""A bucket for the tests that read or write an object store: the loopback S3 server with its endpoint and
credentials in this process's environment, as a user's shell would have them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fixtures.s3server import make_bucket, s3_env, s3_server


@contextmanager
def bucket_env(workdir: Path, bucket: str = "runs") -> Iterator[dict[str, str]]:
    """A loopback S3 server (its files under `workdir`) holding an empty `bucket`; yields its environment, which is
    set in `os.environ` until the block ends."""
    with s3_server(workdir) as endpoint:
        make_bucket(endpoint, bucket)
        env = s3_env(endpoint)
        patch = pytest.MonkeyPatch()
        for k, v in env.items():
            patch.setenv(k, v)
        try:
            yield env
        finally:
            patch.undo()
