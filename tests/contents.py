"""What a run holds, for comparing runs byte for byte: the sha256 of every shard member by key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.core.sample_io import parse_meta
from shards.layout import META_MEMBER, RunDir
from shards.reader import iter_tar_samples, open_run
from shards.verify import verify_run

# How a run went, not what it stored: the decode's seconds, and the LLM usage of the sample (requests, retries).
VOLATILE = {"llm": True, "decode": {"decode_seconds"}}


def stable_meta(data: bytes) -> bytes:
    """A sample's metadata read through the model (either layout), without what varies from run to run: the
    `llm_*` counts are the same LLM usage (a request retried after a server restart counts twice)."""
    doc = parse_meta(data).model_dump(mode="json", exclude=VOLATILE)
    doc["counts"] = [c for c in doc["counts"] if not c["name"].startswith("llm_")]
    return json.dumps(doc, sort_keys=True).encode()


def content(out: Path) -> dict[tuple[str, str], str]:
    """sha256 of every shard member by (key, member); metadata without timings. Fails on a key seen twice."""
    run = open_run(out)
    members: dict[tuple[str, str], str] = {}
    keys: list[str] = []
    for tar in sorted(run.shards.glob("*.tar")):
        for key, sample in iter_tar_samples(tar):
            keys.append(key)
            for name, data in sample.items():
                if name == META_MEMBER:
                    data = stable_meta(data)
                members[(key, name)] = hashlib.sha256(data).hexdigest()
    assert len(keys) == len(set(keys)), f"a key stored twice: {sorted(keys)}"
    return members


def assert_clean(out: Path) -> None:
    run = RunDir(out)
    assert verify_run(run) == []
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".partial", ".rewrite.tar"))]
    assert leftovers == []


def remote_content(url: str) -> dict[tuple[str, str], str]:
    """`content` of a run folder on an object store: the shards its shards.json lists, streamed."""
    from shards.remote import open_stream, remote_shard_urls

    members: dict[tuple[str, str], str] = {}
    keys: list[str] = []
    for shard in remote_shard_urls(url):
        for key, sample in iter_tar_samples(open_stream(shard)):
            keys.append(key)
            for name, data in sample.items():
                members[(key, name)] = hashlib.sha256(stable_meta(data) if name == META_MEMBER else data).hexdigest()
    assert len(keys) == len(set(keys)), f"a key stored twice: {sorted(keys)}"
    return members


def assert_remote_clean(url: str, tmp: Path) -> None:
    """--verify clean, and nothing under shards/ or .ledger/shards/ that shards.json does not list, nor an
    unfinished multipart upload there."""
    from pipeline.core.storage import Storage
    from shards.access import remote_tars
    from shards.remote import mirror_tables, remote_shard_list

    assert verify_run(RunDir(mirror_tables(url, tmp)), remote_tars(url)) == []
    listed = {s["name"] for s in remote_shard_list(url) or []}
    store = Storage(url)
    tars = {i.path.partition("/")[2] for p in store.list_pages("shards/") for i in p}
    records = {i.path.rpartition("/")[2][: -len(".json")] for p in store.list_pages(".ledger/shards/") for i in p}
    assert tars == listed and records == listed, (sorted(tars - listed), sorted(records ^ listed))
    if url.startswith("s3://"):  # and no unfinished upload of a writer left billing in the bucket
        import boto3

        bucket, _, prefix = url[len("s3://"):].partition("/")
        uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/shards/")
        assert not uploads.get("Uploads"), [u["Key"] for u in uploads["Uploads"]]
