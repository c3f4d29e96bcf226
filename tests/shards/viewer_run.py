"""A hand-made run directory for the viewer tests: real tars, index and rejects tables, captions and QA in the
metadata, and text planted with markup (a caption, a question, a source file name, a reject detail)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shards.layout import RunDir, sample_from_sections

PLANTED = '<script>window.PWNED=1</script><img src=x onerror="window.PWNED=2">'


def jpeg(shade: int, size: tuple[int, int] = (48, 32)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, 90)).save(buf, "JPEG")
    return buf.getvalue()


def sample_meta(key: str, duration: float, times: list[float], planted: bool) -> dict:
    caption = PLANTED if planted else f"a ball moves in {key}"
    return {
        "key": key, "source": f"/videos/{key}{PLANTED if planted else ''}.mp4", "frame_set": "shard",
        "video": {"duration_s": duration, "width": 160, "height": 90},
        "decode": {"sets": {"shard": {"timestamps_s": times}}},
        "scores": {"aesthetic": 0.5},
        "captions": {
            "clips": [{"start_s": 0.0, "end_s": duration / 2, "text": caption},
                      {"start_s": duration / 2, "end_s": duration, "text": "the ball stops"}],
            "segments": [{"start_s": 0.0, "end_s": duration, "text": "a segment"}],
            "video": {"start_s": 0.0, "end_s": duration, "text": "the whole video"},
        },
        "qa": {"pairs": [
            {"type": "temporal", "question": PLANTED if planted else "when does it stop?", "answer": "at the end",
             "start_s": duration * 0.6, "end_s": duration * 0.9, "format": "open"},
            {"type": "multiple_choice", "question": "what colour?", "answer": "A", "options": ["green", "red"],
             "start_s": 0.0, "end_s": duration * 0.2, "format": "mc"},
        ]},
    }  # fmt: skip


def layout1_sample(key: str, frames: list[bytes], sections: dict, conversations: list[dict], frame_set: str = "shard",
                   source: str = "") -> dict:  # fmt: skip
    """A sample as layout 1 (before format 2) wrote it: one `NNNN.jpg` member per frame, the task's sections as the
    json (nulls and per-video keys as they came, no format_version) and the LLaVA records as they came."""
    meta = {"key": key, "source": source or sections.get("source") or key, "frame_set": frame_set, **sections}
    return {"__key__": key, **{f"{i:04d}.jpg": f for i, f in enumerate(frames)},
            "json": json.dumps(meta, sort_keys=True).encode(), "conversations.json": json.dumps(conversations).encode()}


def make_run(root: Path, n: int = 6, layout1: bool = False) -> RunDir:
    """n samples over two shards (durations 10s .. 10+100*i s), two rejects; sample 0 carries the planted text.
    `layout1`: the shards hold layout-1 samples (one member per frame), as a run from before format 2."""
    run = RunDir(root).make()
    rows = []
    for i in range(n):
        key, duration = f"vid{i:03d}", 10.0 + 100 * i
        times = [round(duration * j / 8, 3) for j in range(8)]
        frames = [jpeg(20 * j) for j in range(8)]
        shard = f"w0-{i % 2:03d}.tar"
        build = layout1_sample if layout1 else sample_from_sections
        sample = build(key, frames, sample_meta(key, duration, times, planted=i == 0), [])
        with tarfile.open(run.shards / shard, "a") as tar:
            for suffix, value in sample.items():
                if suffix == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
        rows.append({"key": key, "shard": shard, "source": sample_meta(key, duration, times, i == 0)["source"],
                     "duration_s": duration, "frames_stored": 8, "num_qa": 2, "qa_temporal": 1,
                     "qa_multiple_choice": 1, "score_aesthetic": round(0.1 * i, 2), "embedding": None})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), run.index)
    rejects = [{"key": "bad001", "source": "/videos/bad001.mp4", "stage": "probe", "reason": "truncated",
                "detail": f"cut short {PLANTED}"},
               {"key": "bad002", "source": "/videos/bad002.mp4", "stage": "caption", "reason": "llm_bad_json",
                "detail": "no JSON"}]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rejects), run.rejects)
    return run
