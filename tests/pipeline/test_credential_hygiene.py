"""Credentials never land in what a run writes or prints: the object store's keys (from the environment), a
presigned URL's signature, a URL's password. Every file of the run folder, its logs and the command's output are
searched for them; a re-signed URL keeps its video's key; the signed URL is still what the fetch sends."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.core.redact import public_url, scrub_urls
from shards.layout import RunDir
from shards.reader import read_rejects
from tests.httpserver import http_server
from tests.pipeline.test_remote_input import frames_by_key, run_cli
from fixtures.s3server import CREDENTIALS, make_bucket, s3_env, s3_server, upload_tree


def signed(base: str, path: str, signature: str, date: str = "20261207T000000Z") -> str:
    return (f"{base}/{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=CREDSECRET%2F20261207%2Fus-east-1"
            f"&X-Amz-Date={date}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}")


def test_public_url_drops_signatures_and_passwords():
    assert public_url(signed("https://b.s3.amazonaws.com", "v/a.mp4", "abc")) == "https://b.s3.amazonaws.com/v/a.mp4"
    assert public_url(signed("https://h", "a.mp4", "1", "d1")) == public_url(signed("https://h", "a.mp4", "2", "d2"))
    assert public_url("https://me:pw@h/a.mp4?v=2&token=t") == "https://me:***@h/a.mp4?v=2&token=***"
    assert public_url("https://acct.blob.core.windows.net/c/a.mp4?sv=2024&se=2026&sp=r&sig=xyz") == \
        "https://acct.blob.core.windows.net/c/a.mp4"
    assert public_url("s3://bucket/a.mp4") == "s3://bucket/a.mp4" and public_url("/data/a.mp4") == "/data/a.mp4"
    text = scrub_urls(f"GET {signed('http://h', 'a.mp4', 'SIG')}: HTTP 403; retry url='/a.mp4?X-Amz-Signature=SIG'")
    assert "SIG'" not in text and "SIG:" not in text and "CREDSECRET" not in text and text.startswith("GET http://h/a.mp4: HTTP 403")


def _leaks(root, secrets: list[str]) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(root)}: {s}" for s in secrets if s.encode() in data]
    return found


@pytest.mark.slow
def test_no_credential_reaches_a_file_or_the_output(video, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(video("h264_10s"), videos / "a.mp4")
    shutil.copy(video("vp9_10s"), videos / "b.webm")
    secrets = [CREDENTIALS["AWS_SECRET_ACCESS_KEY"], CREDENTIALS["AWS_ACCESS_KEY_ID"], "SIGSECRET", "CREDSECRET",
               "PASSWORDSECRET"]
    with s3_server(tmp_path) as endpoint, http_server(videos) as (base, faults):
        make_bucket(endpoint, "videos")
        env = s3_env(endpoint)
        (tmp_path / "bucket").mkdir()
        shutil.copy(video("clock_10s"), tmp_path / "bucket" / "c.mp4")
        with pytest.MonkeyPatch.context() as patch:
            for k, v in env.items():
                patch.setenv(k, v)
            upload_tree(tmp_path / "bucket", "s3://videos/raw")
        faults.signed["/a.mp4"] = "SIGSECRET1"
        user_base = base.replace("http://", "http://reader:PASSWORDSECRET@")
        manifests = {}
        for n, sig in enumerate(("SIGSECRET1", "SIGSECRET2")):  # the same list signed twice (the second is stale)
            manifest = tmp_path / f"urls{n}.jsonl"
            manifest.write_text("".join(json.dumps({"video": url}) + "\n" for url in (
                signed(base, "a.mp4", sig, f"2026120{n}T000000Z"), f"{user_base}/b.webm",
                signed(base, "missing.mp4", sig), "s3://videos/raw/c.mp4")))
            manifests[n] = manifest
        first = run_cli(tmp_path, env, f"input.path={manifests[0]}", f"output.dir={tmp_path / 'one'}",
                        "input.http.enabled=true", "input.fetch.retries=0")
        assert first.returncode == 0, first.stderr[-3000:]
        faults.signed["/a.mp4"] = "SIGSECRET2"
        second = run_cli(tmp_path, env, f"input.path={manifests[1]}", f"output.dir={tmp_path / 'two'}",
                         "input.http.enabled=true", "input.fetch.retries=0")
        assert second.returncode == 0, second.stderr[-3000:]
    one, two = frames_by_key(tmp_path / "one"), frames_by_key(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 3  # a re-signed URL: the same key, fetched with its signature
    sources = sorted(meta["source"] for _, meta in one.values())
    assert sources == sorted([f"{base}/a.mp4", f"{base.replace('http://', 'http://reader:***@')}/b.webm",
                              "s3://videos/raw/c.mp4"])
    rejects = read_rejects(RunDir(tmp_path / "one"))
    assert [(r["source"], r["reason"]) for r in rejects] == [(f"{base}/missing.mp4", "fetch_failed")]
    assert "404" in rejects[0]["detail"]
    for run in (first, second):
        assert not [s for s in secrets if s in run.stdout + run.stderr]
    assert _leaks(tmp_path / "one", secrets) == [] and _leaks(tmp_path / "two", secrets) == []
