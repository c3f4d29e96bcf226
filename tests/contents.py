"""What a run holds, for comparing runs byte for byte: the sha256 of every shard member by key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shards.layout import META_MEMBER, RunDir
from shards.reader import iter_tar_samples, open_run
from shards.verify import verify_run

# How a run went, not what it stored: seconds, and the LLM usage of the sample (requests, retries, when).
VOLATILE = ("timings", "decode_seconds", "llm")


def _strip(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if k in VOLATILE:
            continue
        out[k] = _strip(v) if isinstance(v, dict) else v
    return out


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
                    data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
                members[(key, name)] = hashlib.sha256(data).hexdigest()
    assert len(keys) == len(set(keys)), f"a key stored twice: {sorted(keys)}"
    return members


def assert_clean(out: Path) -> None:
    run = RunDir(out)
    assert verify_run(run) == []
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".partial", ".rewrite.tar"))]
    assert leftovers == []
