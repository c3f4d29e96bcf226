"""A run directory written with the project's own shard writer and ledger, without decoding any video.

Every sample has its own frames (grey levels), key and conversation ids, so a test can say exactly which
items a training step consumed.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from pipeline.core.sample import LAYOUT1_VERSION
from shards.commit import begin_generation, commit_shard
from shards.layout import RunDir, sample_from_sections
from shards.ledger import write_tables
from shards.tarwriter import ShardFile, ShardInfo, sha256_file


def jpeg(level: int, size: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (level, 255 - level, (level * 7) % 256)).save(out, "JPEG", quality=90)
    return out.getvalue()


def conversation(cid: str, n: int) -> dict:
    return {"id": cid, "conversations": [
        {"from": "human", "value": "<image>\nWhat happens in the video?"},
        {"from": "gpt", "value": "A person walks across the room." if n % 2 else "The camera pans to the left."}]}


def union_sections(key: str, source_frames: int = 300, stages: tuple[int, ...] = (32, 128, 192)) -> dict:
    """A video's `meta` sections as the pipeline writes them for a union set: the stored frames are the union of
    every stage's paper picks (linspace over the source), and each stage's positions among them (244 from 300)."""
    import numpy as np

    picks = {k: np.linspace(0, source_frames - 1, k, dtype=int).tolist() for k in stages}
    indices = sorted(set().union(*picks.values()))
    where = {source: n for n, source in enumerate(indices)}
    record = {"name": "shard", "mode": "exact", "seek": "index", "indices": indices,
              "timestamps_s": [i / 30 for i in indices], "target_times_s": [i / 30 for i in indices],
              "width": 64, "height": 64, "num_frames": len(indices),
              "stages": {str(k): [where[i] for i in v] for k, v in picks.items()}}  # fmt: skip
    return {"key": key, "decode": {"source": key, "decoder": "pyav", "fallback_reason": None, "num_frames": source_frames,
                                   "avg_fps": 30.0, "duration_s": source_frames / 30, "declared_duration_s": None,
                                   "sets": {"shard": record}}}  # fmt: skip


def frames_of(s: int, frames: int) -> list[bytes]:
    """Sample s's stored frames: distinct grey levels (for up to 256 frames), so a test can tell which were fed."""
    return [jpeg((s * 31 + f * 5) % 256) for f in range(frames)]


def write_run(root: Path, samples: int, per_shard: int, frames: int = 6, conversations: int = 1,
              meta_of=None, layout1: bool = False, turns_of=None) -> Path:  # fmt: skip
    """`samples` videos over shards of `per_shard`; conversation ids `s<sample>c<conv>`, all distinct;
    `turns_of(sample, conversation)`, when given, may return other turns for a conversation (None: the usual).

    `layout1`: the same samples as layout 1 (before format 2) stored them, written member by member with the
    stdlib's tarfile: `<key>.NNNN.jpg` per frame, the dict-shaped json with nulls, the LLaVA records as they came."""
    run = RunDir(root).make()
    generation = begin_generation(run)
    for first in range(0, samples, per_shard):
        name = f"shard-{first // per_shard:05d}.tar"
        rows, written = [], []
        for s in range(first, min(first + per_shard, samples)):
            key = f"video{s:03d}"
            convs = [conversation(f"s{s:03d}c{c}", s + c) for c in range(conversations)]
            for c, conv in enumerate(convs):
                conv["conversations"] = (turns_of and turns_of(s, c)) or conv["conversations"]
            meta = meta_of(s) if meta_of else {"key": key}
            written.append((layout1_sample if layout1 else sample_from_sections)(key, frames_of(s, frames), meta, convs))
            rows.append({"key": key, "shard": name, "frames_stored": frames, "num_conversations": conversations})
        info = write_layout1_tar(run.shards / name, written) if layout1 else write_shard(run.shards, name, written)
        commit_shard(run, generation, info, rows, fsync=False)
    write_tables(run)
    return root


def write_shard(directory: Path, name: str, samples: list[dict]) -> ShardInfo:
    shard = ShardFile(directory, name, fsync=False)
    for sample in samples:
        shard.write(sample)
    return shard.close()


def layout1_sample(key: str, frames: list[bytes], sections: dict, conversations: list[dict]) -> list[tuple[str, bytes]]:
    """A sample's members as layout 1 named and wrote them (the sink's `sample_meta` of then: key, source,
    frame_set, then the task's sections as they were, nulls included)."""
    meta = {"key": key, "source": sections.get("source", key), "frame_set": "shard", "captions": None, "qa": None,
            "scores": {}, "would_reject": [], **sections}  # fmt: skip
    return ([(f"{key}.{n:04d}.jpg", f) for n, f in enumerate(frames)]
            + [(f"{key}.conversations.json", json.dumps(conversations).encode()), (f"{key}.json", json.dumps(meta).encode())])


def write_layout1_tar(path: Path, samples: list[list[tuple[str, bytes]]]) -> ShardInfo:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o444, 0
                tar.addfile(info, io.BytesIO(data))
    return ShardInfo(path.name, sha256_file(path), path.stat().st_size, len(samples), format_version=LAYOUT1_VERSION)
