"""A run directory of multiple-choice QA, as the pipeline writes it, with a held-out eval split.

The questions are the demo's kind (what its example videos are known to be: length, orientation, colour),
asked as the QA stage asks them (`dense_caption.qa.conversation`). Each video's frames are its own seeded
noise and each question names its clip, so a model can memorise the answers. Answers cycle A-D within each
split and each kind of question always has the same options, so neither a letter nor an option's text
predicts a held-out answer: a model that learned the pairs, not a shortcut, stays near chance on them.
"""

from __future__ import annotations

from pathlib import Path

from dense_caption.qa import LETTERS, conversation
from shards.commit import begin_generation, commit_shard
from shards.layout import RunDir, sample_from_sections
from shards.ledger import write_tables
from shards.split import EVAL, TRAIN, split_of

def noise_jpeg(seed: int, size: int = 64) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(out, "JPEG", quality=90)
    return out.getvalue()


QUESTIONS = [
    ("How long is the video?", ["under ten seconds", "about a minute", "about five minutes", "over an hour"]),
    ("How is the video oriented?", ["landscape", "portrait", "square", "rotated by 90 degrees"]),
    ("Which colour fills most of the frames?", ["red", "green", "blue", "grey"]),
    ("What kind of content does the video show?", ["colour bars", "a clock", "moving gradients", "a test pattern"]),
]
FRACTION = 0.4


def write_mc_run(root: Path, videos: int = 20, frames: int = 4, layout1: bool = False) -> dict[str, list[str]]:
    """`videos` samples, one MC question each, split by key with `FRACTION`; returns the keys of each split.
    `layout1`: the samples as runs before format 2 wrote them (one member per frame)."""
    from tests.shards.viewer_run import layout1_sample

    build = layout1_sample if layout1 else sample_from_sections
    run = RunDir(root).make()
    generation = begin_generation(run)
    keys = {TRAIN: [], EVAL: []}
    for v in range(videos):
        key = f"demo{v:03d}"
        keys[split_of(key, FRACTION)].append(key)
    for split, members in keys.items():
        shard = f"shard-{split}-000.tar" if split == TRAIN else "shard-eval-000.tar"
        from shards.tarwriter import ShardFile

        writer = ShardFile(run.shards, shard, fsync=False)
        rows = []
        for n, key in enumerate(members):
            v = int(key[4:])
            question, options = QUESTIONS[v % len(QUESTIONS)]
            pair = {"type": "attribute", "format": "multiple_choice", "question": f"In clip {v}: {question.lower()}",
                    "options": options,
                    "answer": LETTERS[n % len(LETTERS)]}  # fmt: skip
            meta = {"key": key, "video": {"duration_s": 6.0 + 100 * (v % 3)}}
            writer.write(build(key, [noise_jpeg(v * 100 + f) for f in range(frames)], meta, [conversation(key, 0, pair)]))
            rows.append({"key": key, "shard": shard, "frames_stored": frames, "num_conversations": 1, "split": split})
        commit_shard(run, generation, writer.close(), rows, fsync=False)
    write_tables(run)
    return keys
