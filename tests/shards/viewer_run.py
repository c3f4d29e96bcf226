"""A hand-made run directory for the viewer tests: real tars, index and rejects tables, captions and QA in the
metadata, and text planted with markup (a caption, a question, a source file name, a reject detail)."""

from __future__ import annotations

import io
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


def make_run(root: Path, n: int = 6) -> RunDir:
    """n samples over two shards (durations 10s .. 10+100*i s), two rejects; sample 0 carries the planted text."""
    run = RunDir(root).make()
    rows = []
    for i in range(n):
        key, duration = f"vid{i:03d}", 10.0 + 100 * i
        times = [round(duration * j / 8, 3) for j in range(8)]
        frames = [jpeg(20 * j) for j in range(8)]
        shard = f"w0-{i % 2:03d}.tar"
        sample = sample_from_sections(key, frames, sample_meta(key, duration, times, planted=i == 0), [])
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
