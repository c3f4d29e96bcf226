"""What a sample and a run directory look like on disk: the one place names are decided.

A sample (one video) in a tar, format 2 (`pipeline/core/sample.py`): `<key>.frames.mjpeg` (the stored frames' JPEGs
back to back, in time order; where each starts is in the json's `frames.offsets`), `<key>.json` (the sample's
metadata, `SampleMeta`) and `<key>.conversations.json` (LLaVA conversations, `Conversation`; empty before
captioning). The same three member names in every sample, whatever its frame count. Layout 1 (before format 2)
stored one `<key>.NNNN.jpg` member per frame; `stored_frames` reads both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.sample import CONVERSATIONS_MEMBER, FRAMES_MEMBER, META_MEMBER, Conversation, SampleMeta
from pipeline.core.sample_io import (conversation_from_record, dump, dump_conversations, meta_from_sections,
                                parse_conversations, parse_meta)  # fmt: skip

SHARDS_DIR = "shards"
LEDGER_DIR = ".ledger"  # per-shard and per-writer records; the tables are rebuilt from them
INDEX_FILE = "index.parquet"
REJECTS_FILE = "rejects.parquet"
RUN_FILE = "run.json"
SHARDS_FILE = "shards.json"
EMBEDDINGS_FILE = "embeddings.parquet"  # key, CLIP video embedding (when the CLIP stage ran)
CONFIG_FILE = "config.resolved.yaml"  # the config the run ran with, every default filled in
TMP_SUFFIX = ".partial"

FRAME_MEMBER = re.compile(r"^(\d{4,})\.jpg$")  # layout 1's one member per frame
MEMBERS = (FRAMES_MEMBER, META_MEMBER, CONVERSATIONS_MEMBER)
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def frame_member(i: int) -> str:
    return f"{i:04d}.jpg"


def check_key(key: str) -> str:
    """Keys become tar member names: refuse anything that could escape or split (`/`, `..`, dots, controls)."""
    if not _SAFE_KEY.fullmatch(key):
        raise ValueError(f"unsafe sample key {key!r}: only [A-Za-z0-9_-], 1-128 characters")
    return key


def build_sample(key: str, frames: list[bytes], meta: SampleMeta, conversations: list[Conversation]) -> dict[str, Any]:
    """The sample's members; `meta.frames` must describe `frames` (offsets and sizes of the concatenation)."""
    if meta.frames.sizes != [len(f) for f in frames]:
        raise ValueError(f"sample {key}: the metadata's frame sizes do not match the frames")
    return {"__key__": check_key(key), FRAMES_MEMBER: b"".join(frames), META_MEMBER: dump(meta),
            CONVERSATIONS_MEMBER: dump_conversations(conversations)}  # fmt: skip


def sample_from_sections(key: str, frames: list[bytes], sections: dict[str, Any], conversations: list[dict[str, Any]],
                         frame_set: str = "shard", split: str = "train", source: str = "") -> dict[str, Any]:  # fmt: skip
    """A sample's members from a task's `meta` sections (`pipeline/core/meta.py`) and LLaVA records, through the model."""
    meta = meta_from_sections(key, source or str(sections.get("source") or key), frame_set, split, sections,
                              [len(f) for f in frames])  # fmt: skip
    convs = [conversation_from_record(r, f"{key}-{n}") for n, r in enumerate(conversations)]
    return build_sample(key, frames, meta, convs)


def layout1_frame_names(members: Any) -> list[str]:
    """A layout-1 sample's frame members in frame order."""
    return sorted((n for n in members if FRAME_MEMBER.match(n)), key=lambda n: int(n.split(".")[0]))


def stored_frames(members: Mapping[str, Any], meta: SampleMeta, positions: list[int] | None = None) -> list[bytes]:
    """The JPEGs of the stored frames at `positions` (all when None), from either layout.

    A `members` mapping that can read part of a member (`read_range(name, start, size)`, the permutation loader's
    lazy sample) reads only the frames asked for; its `read_gap` (bytes) lets it read across small gaps instead.
    """
    if not meta.frames.member:  # layout 1
        names = layout1_frame_names(members)
        return [members[names[p]] for p in (range(len(names)) if positions is None else positions)]
    layout = meta.frames
    wanted = range(layout.count) if positions is None else positions
    reader = getattr(members, "read_range", None)
    if reader is not None:
        gap = getattr(members, "read_gap", 0)
        return _read_coalesced(reader, layout.member, layout.offsets, layout.sizes, list(wanted), gap)
    data = members[layout.member]
    return [bytes(data[layout.offsets[p] : layout.offsets[p] + layout.sizes[p]]) for p in wanted]


def _read_coalesced(reader: Any, member: str, offsets: list[int], sizes: list[int], wanted: list[int], gap: int
                    ) -> list[bytes]:
    """The frames at `wanted` through `reader(member, start, size)`: frames no more than `gap` bytes apart are read
    as one range (consecutive frames always: they are contiguous; a store whose every request costs sets a gap)."""
    got: dict[int, bytes] = {}
    order = sorted(set(wanted), key=lambda p: offsets[p])
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and offsets[order[j + 1]] - (offsets[order[j]] + sizes[order[j]]) <= gap:
            j += 1
        start = offsets[order[i]]
        data = reader(member, start, offsets[order[j]] + sizes[order[j]] - start)
        for p in order[i:j + 1]:
            got[p] = bytes(data[offsets[p] - start:offsets[p] - start + sizes[p]])
        i = j + 1
    return [got[p] for p in wanted]


def stored_count(members: Any, meta: SampleMeta) -> int:
    return meta.frames.count if meta.frames.member else len(layout1_frame_names(members))


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


class Sample:
    """One sample read back through the model: its metadata, conversations and stored frames (either layout)."""

    def __init__(self, members: Mapping[str, Any], key: str | None = None):
        self.members = members
        self.key = key if key is not None else str(members.get("__key__", ""))
        self.meta = parse_meta(members[META_MEMBER])
        self.conversations = parse_conversations(members.get(CONVERSATIONS_MEMBER), self.key)

    @property
    def num_frames(self) -> int:
        return stored_count(self.members, self.meta)

    def frames(self, positions: list[int] | None = None) -> list[bytes]:
        return stored_frames(self.members, self.meta, positions)
