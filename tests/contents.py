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
