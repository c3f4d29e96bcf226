"""A run directory written with the project's own shard writer and ledger, without decoding any video.

Every sample has its own frames (grey levels), key and conversation ids, so a test can say exactly which
items a training step consumed.
"""

from __future__ import annotations

import io
from pathlib import Path

from shards.commit import begin_generation, commit_shard
from shards.layout import RunDir, sample_from_sections
from shards.ledger import write_tables
from shards.tarwriter import ShardFile


def jpeg(level: int, size: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (level, 255 - level, (level * 7) % 256)).save(out, "JPEG", quality=90)
    return out.getvalue()


def conversation(cid: str, n: int) -> dict:
    return {"id": cid, "conversations": [
        {"from": "human", "value": "<image>\nWhat happens in the video?"},
        {"from": "gpt", "value": "A person walks across the room." if n % 2 else "The camera pans to the left."}]}


def write_run(root: Path, samples: int, per_shard: int, frames: int = 6, conversations: int = 1,
              meta_of=None) -> Path:  # fmt: skip
    """`samples` videos over shards of `per_shard`; conversation ids `s<sample>c<conv>`, all distinct."""
    run = RunDir(root).make()
    generation = begin_generation(run)
    for first in range(0, samples, per_shard):
        shard = ShardFile(run.shards, f"shard-{first // per_shard:05d}.tar", fsync=False)
        rows = []
        for s in range(first, min(first + per_shard, samples)):
            key = f"video{s:03d}"
            convs = [conversation(f"s{s:03d}c{c}", s + c) for c in range(conversations)]
            meta = meta_of(s) if meta_of else {"key": key}
            shard.write(sample_from_sections(key, [jpeg((s * 31 + f * 5) % 256) for f in range(frames)], meta, convs))
            rows.append({"key": key, "shard": shard.final.name, "frames_stored": frames, "num_conversations": conversations})
        info = shard.close()
        commit_shard(run, generation, info, rows, fsync=False)
    write_tables(run)
    return root
