"""What a sample and a run directory look like on disk: the one place names are decided.

Sample (one video) in a tar: `<key>.0000.jpg` ... frames in time order,
`<key>.json` metadata, `<key>.conversations.json` LLaVA conversations (a list of
`{"id", "conversations": [{"from", "value"}, ...]}`; empty before captioning).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SHARDS_DIR = "shards"
LEDGER_DIR = ".ledger"  # per-shard and per-writer records; the tables are rebuilt from them
INDEX_FILE = "index.parquet"
REJECTS_FILE = "rejects.parquet"
RUN_FILE = "run.json"
SHARDS_FILE = "shards.json"
EMBEDDINGS_FILE = "embeddings.parquet"  # key, CLIP video embedding (when the CLIP stage ran)  # name, sha256, bytes, samples of every finished shard
TMP_SUFFIX = ".partial"

META_MEMBER = "json"
CONVERSATIONS_MEMBER = "conversations.json"
FRAME_MEMBER = re.compile(r"^(\d{4,})\.jpg$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def frame_member(i: int) -> str:
    return f"{i:04d}.jpg"


def check_key(key: str) -> str:
    """Keys become tar member names: refuse anything that could escape or split (`/`, `..`, dots, controls)."""
    if not _SAFE_KEY.fullmatch(key):
        raise ValueError(f"unsafe sample key {key!r}: only [A-Za-z0-9_-], 1-128 characters")
    return key


def build_sample(key: str, frames: list[bytes], meta: dict[str, Any], conversations: list[Any]) -> dict[str, Any]:
    sample: dict[str, Any] = {"__key__": check_key(key)}
    for i, jpg in enumerate(frames):
        sample[frame_member(i)] = jpg
    sample[META_MEMBER] = json.dumps(meta, sort_keys=True).encode()
    sample[CONVERSATIONS_MEMBER] = json.dumps(conversations).encode()
    return sample


def sample_bytes(sample: dict[str, Any]) -> int:
    return sum(len(v) for k, v in sample.items() if k != "__key__")


class RunDir:
    """Paths of one run's output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards = self.root / SHARDS_DIR
        self.ledger = self.root / LEDGER_DIR
        self.ledger_shards = self.ledger / "shards"
        self.ledger_rejects = self.ledger / "rejects"
        self.index = self.root / INDEX_FILE
        self.rejects = self.root / REJECTS_FILE
        self.run_json = self.root / RUN_FILE
        self.shards_json = self.root / SHARDS_FILE
        self.embeddings = self.root / EMBEDDINGS_FILE
        self.lock = self.root / ".lock"

    def make(self) -> "RunDir":
        for d in (self.shards, self.ledger_shards, self.ledger_rejects):
            d.mkdir(parents=True, exist_ok=True)
        return self
