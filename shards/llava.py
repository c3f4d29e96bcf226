"""Export shards as LLaVA-format annotations so the paper's own trainer (LLaVA-NeXT) can read our data.

One record per conversation: `{"id", "video", "conversations"}` plus any other
fields the record was imported with. `video` is the source path relative to
the video root it was imported from (or absolute), or, with `frames_dir`, a
folder of the sample's stored frames (`<key>/0000.jpg`...), which LLaVA-NeXT
reads as a video given as frames. A sample storing several stages' exact
frames (`stage_frames`) exports the largest stage's, in time order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shards.layout import CONVERSATIONS_MEMBER, FRAME_MEMBER, META_MEMBER, check_key, frame_member
from shards.reader import iter_samples, open_run

log = logging.getLogger(__name__)


def largest_stage(meta: dict[str, Any], names: list[str]) -> list[str]:
    """The frame members of the largest stage a union sample records, else every stored frame."""
    stages = (((meta.get("decode") or {}).get("sets") or {}).get(meta.get("frame_set") or "") or {}).get("stages")
    if not stages:
        return names
    return [names[p] for p in stages[max(stages, key=int)]]


def export_llava(run_dir: str | Path, out_json: str | Path, frames_dir: str | Path | None = None) -> int:
    run = open_run(run_dir)
    records: list[dict[str, Any]] = []
    root = Path(frames_dir).resolve() if frames_dir is not None else None
    for sample in iter_samples(run):
        key = sample["__key__"]
        try:
            check_key(key)  # a member named `../../x` or `/abs/x` would write outside frames_dir
        except ValueError as e:
            log.warning("skipping a sample: %s", e)
            continue
        meta = json.loads(sample[META_MEMBER])
        video = meta.get("video_rel") or meta["source"]
        if frames_dir is not None:
            folder = root / key
            if folder.resolve().parent != root:
                log.warning("skipping sample %s: its folder would lie outside %s", key, root)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            names = sorted(name for name in sample if FRAME_MEMBER.match(name))
            for n, name in enumerate(largest_stage(meta, names)):
                (folder / frame_member(n)).write_bytes(sample[name])
            video = key
        for n, record in enumerate(json.loads(sample[CONVERSATIONS_MEMBER])):
            records.append({"id": record.get("id") or f"{key}-{n}", "video": video,
                            **{k: v for k, v in record.items() if k not in ("id", "video")}})
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    return len(records)
