"""Remote videos copied to scratch: bounded, checked against the listing, retried on transient failures, and a
redirect never leaves the allowed prefixes; against a real HTTP server and a real S3 API server on loopback."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.core.errors import Reason, VideoError
from pipeline.core.storage import Storage
from pipeline.video.config_video import FetchConfig
from pipeline.video.fetch import fetch
from pipeline.video.scratch import scratch_dir, sweep_stale
from tests.httpserver import http_server
from fixtures.s3server import make_bucket, s3_env, s3_server

FAST = FetchConfig(max_bytes=1 << 20, timeout_s=10, retries=3, backoff_s=0.01)
BODY = bytes(range(256)) * 1000  # 256000 bytes


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    (root / "v").mkdir(parents=True)
    (root / "v" / "a.mp4").write_bytes(BODY)
    with http_server(root) as (base, faults):
        yield base, faults


def test_http_fetch_is_exact_and_retries_transient_failures(served, tmp_path):
    base, faults = served
    faults.statuses["/v/a.mp4"] = [503, 429]
    faults.resets["/v/a.mp4"] = 1
    got = fetch(f"{base}/v/a.mp4", tmp_path / "a.mp4", FAST)
    assert got.bytes == len(BODY) and got.attempts == 4 and (tmp_path / "a.mp4").read_bytes() == BODY


def test_http_failures_are_rejects_that_name_the_step(served, tmp_path):
    base, faults = served
    with pytest.raises(VideoError) as e:
        fetch(f"{base}/v/missing.mp4", tmp_path / "m.mp4", FAST)
    assert e.value.reason == Reason.FETCH_FAILED and "HTTP 404" in e.value.detail
    faults.statuses["/v/a.mp4"] = [503] * 10
    with pytest.raises(VideoError) as e:
        fetch(f"{base}/v/a.mp4", tmp_path / "a.mp4", FAST)
    assert e.value.reason == Reason.FETCH_FAILED and "HTTP 503" in e.value.detail and "after 4 attempts" in e.value.detail
    faults.statuses.clear()
    with pytest.raises(VideoError) as e:
        fetch(f"{base}/v/a.mp4", tmp_path / "a.mp4", FetchConfig(max_bytes=1000, retries=0))
    assert e.value.reason == Reason.FETCH_TOO_LARGE and not (tmp_path / "a.mp4").exists()


def test_a_changed_source_and_a_redirect_out_of_bounds_are_refused(served, tmp_path):
    base, faults = served
    etag = '"' + hashlib.md5(BODY).hexdigest() + '"'
    assert fetch(f"{base}/v/a.mp4", tmp_path / "a.mp4", FAST, expected_size=len(BODY), expected_etag=etag).bytes
    with pytest.raises(VideoError) as e:
        fetch(f"{base}/v/a.mp4", tmp_path / "a.mp4", FAST, expected_etag='"other"')
    assert e.value.reason == Reason.SOURCE_CHANGED
    faults.redirects["/v/r.mp4"] = "/v/a.mp4"
    assert fetch(f"{base}/v/r.mp4", tmp_path / "r.mp4", FAST, allowed_prefixes=(f"{base}/v/",)).bytes == len(BODY)
    faults.redirects["/v/out.mp4"] = "http://127.0.0.1:9/elsewhere.mp4"
    with pytest.raises(VideoError) as e:
        fetch(f"{base}/v/out.mp4", tmp_path / "o.mp4", FAST, allowed_prefixes=(f"{base}/v/",))
    assert e.value.reason == Reason.OUTSIDE_ALLOWED_ROOTS and "elsewhere.mp4" in e.value.detail


def test_object_store_fetch(tmp_path, monkeypatch):
    with s3_server(tmp_path) as endpoint:
        make_bucket(endpoint, "videos")
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        Storage("s3://videos/raw").put("a.mp4", BODY)
        info = Storage("s3://videos/raw").head("a.mp4")
        got = fetch("s3://videos/raw/a.mp4", tmp_path / "a.mp4", FAST, expected_size=info.size, expected_etag=info.etag)
        assert got.bytes == len(BODY) and (tmp_path / "a.mp4").read_bytes() == BODY
        with pytest.raises(VideoError) as e:
            fetch("s3://videos/raw/none.mp4", tmp_path / "n.mp4", FAST)
        assert e.value.reason == Reason.FETCH_FAILED and "404" in e.value.detail
        with pytest.raises(VideoError) as e:
            fetch("s3://videos/raw/a.mp4", tmp_path / "a.mp4", FetchConfig(max_bytes=10))
        assert e.value.reason == Reason.FETCH_TOO_LARGE
        with pytest.raises(VideoError) as e:
            fetch("s3://videos/raw/a.mp4", tmp_path / "a.mp4", FAST, expected_size=5)
        assert e.value.reason == Reason.SOURCE_CHANGED


def test_a_dead_workers_scratch_is_swept_and_only_that(tmp_path):
    dead = tmp_path / "prolongvid-fetch-999999999-abc"
    dead.mkdir()
    other = tmp_path / "someone-elses-999999999-abc"
    other.mkdir()
    with scratch_dir("prolongvid-fetch-", tmp_path) as mine:
        assert not dead.exists() and other.exists()
        assert sweep_stale("prolongvid-fetch-", tmp_path) == []  # a live process's folder stays
        assert (tmp_path / mine.rpartition("/")[2]).exists()
