"""Human-readable output: tables of probe results and decoded sets, frame sets written to disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.records import DecodeResult, VideoInfo
from pipeline.core.tables import table


def probe_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        name = Path(r["path"]).name
        if not r["ok"]:
            out.append([name, "REJECT " + r["reason"], r["detail"][:70], "", "", "", "", ""])
            continue
        frames = f"{r['num_frames']}{'' if r['num_frames_exact'] else '~'}"
        fps = f"{r['avg_fps']:.2f}" + (" vfr" if r["variable_frame_rate"] else "")
        key = f"{r['keyframe_interval_s']:.1f}s" if r["keyframe_interval_s"] else "-"
        out.append(
            [
                name,
                "ok",
                f"{r['duration_s']:.1f}s",
                frames,
                fps,
                f"{r['width']}x{r['height']}" + (f" rot{r['rotation']}" if r["rotation"] else ""),
                f"{r['codec']}/{r['pix_fmt']}" + (" +audio" if r["has_audio"] else ""),
                key,
            ]
        )
    return table(["file", "status", "duration", "frames", "fps", "size", "codec", "keyint"], out)


def write_frame_sets(result: DecodeResult, info: VideoInfo, out_dir: str | Path) -> Path:
    """Write each set as `<out>/<set>/NNNN.jpg` plus `<out>/frames.json` (probe and decode metadata)."""
    out = Path(out_dir)
    for name, fs in result.sets.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(fs.jpegs):
            (folder / f"{i:04d}.jpg").write_bytes(data)
    meta = out / "frames.json"
    meta.write_text(json.dumps({"video": info.to_dict(), "decode": result.meta()}, indent=1))
    return meta
