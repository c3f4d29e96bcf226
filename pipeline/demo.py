"""The demo: generate example videos (good and broken), probe and sample each, print what was found.

Writes under the run's output dir: `videos/` (the examples), `frames/<video>/<set>/NNNN.jpg`,
`demo.json` (one record per video: probe, decode metadata or reject reason) and
the resolved config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.config import RunConfig, write_resolved_config
from pipeline.errors import VideoError
from pipeline.extract import extract_frames
from pipeline.probe import preflight
from pipeline.records import Rejection
from pipeline.report import table, write_frame_sets
from pipeline.synth import CATALOGUE, SynthError, can_encode, make_bad_file, make_video

EXAMPLES = ["h264_2min", "h264_10s", "hevc_10s", "vp9_10s", "theora_10s", "vfr_10s", "rotated_10s"]
BAD_EXAMPLES = ["zero_byte", "truncated", "truncated_index", "random_bytes", "audio_only", "png_as_mp4", "unknown_codec"]


def make_examples(video_dir: Path) -> list[Path]:
    paths = []
    for name in EXAMPLES:
        spec = CATALOGUE[name]
        if not can_encode(spec.codec):
            print(f"(skipping {name}: this ffmpeg cannot encode {spec.codec})")
            continue
        paths.append(make_video(spec, video_dir))
    for kind in BAD_EXAMPLES:
        try:
            paths.append(make_bad_file(kind, video_dir))
        except SynthError as e:
            print(f"(skipping bad file {kind}: {e})")
    return paths


def run_demo(cfg: RunConfig) -> int:
    out = Path(cfg.output.dir)
    video_dir = Path(cfg.input.path)
    t0 = time.perf_counter()
    paths = make_examples(video_dir)
    print(f"{len(paths)} example files in {video_dir} ({time.perf_counter() - t0:.1f}s)\n")
    write_resolved_config(cfg, out)

    records, rows = [], []
    for path in paths:
        try:
            info = preflight(path, cfg.probe, cfg.limits)
        except VideoError as e:
            rej = Rejection(str(path), "probe", e.reason.value, e.detail)
            records.append({"rejected": rej.to_dict()})
            rows.append([path.name, "reject: " + e.reason.value, "", "", "", "", "", e.detail[:60]])
            continue
        try:
            result = extract_frames(info, cfg.sampling, cfg.decode)
        except VideoError as e:
            rej = Rejection(str(path), "decode", e.reason.value, e.detail)
            records.append({"video": info.to_dict(), "rejected": rej.to_dict()})
            rows.append([path.name, "reject: " + e.reason.value, f"{info.duration_s:.0f}s", "", "", "", "", e.detail[:60]])
            continue
        write_frame_sets(result, info, out / "frames" / path.stem)
        records.append({"video": info.to_dict(), "decode": result.meta()})
        sets = ", ".join(f"{n} {len(s)}@{s.width}x{s.height}" for n, s in result.sets.items())
        rows.append(
            [
                path.name,
                "ok",
                f"{info.duration_s:.0f}s",
                f"{info.avg_fps:.1f}" + (" vfr" if info.variable_frame_rate else ""),
                f"{info.width}x{info.height}" + (f" rot{info.rotation}" if info.rotation else ""),
                result.decoder + (" (fallback)" if result.fallback_reason else ""),
                f"{result.decode_seconds:.2f}s",
                sets,
            ]
        )
    print(table(["file", "status", "duration", "fps", "size", "decoder", "decode", "frame sets / detail"], rows))
    (out / "demo.json").write_text(json.dumps(records, indent=1))
    ok = sum(1 for r in records if "decode" in r)
    print(f"\n{ok} sampled, {len(records) - ok} rejected; frames in {out / 'frames'}, records in {out / 'demo.json'}")
    return 0
