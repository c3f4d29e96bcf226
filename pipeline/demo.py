"""The demo: generate example videos (good and broken), run the whole pipeline on them, print the stats.

Writes under the run's output dir: `videos/` (the examples) and everything a
run writes (`shards/`, `index.parquet`, `rejects.parquet`, `run.json`).
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.config import RunConfig
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
    """Generate the examples under input.path, run the real pipeline on them (embedded Ray), print the stats."""
    from pipeline.cli import print_run_summary
    from pipeline.run import run_pipeline
    from shards.reader import open_run
    from shards.stats import compute_stats, stats_table

    video_dir = Path(cfg.input.path)
    t0 = time.perf_counter()
    paths = make_examples(video_dir)
    print(f"{len(paths)} example files in {video_dir} ({time.perf_counter() - t0:.1f}s)\n")
    summary = run_pipeline(cfg, force=True)  # a demo always shows a whole run
    print_run_summary(summary)
    print()
    print(stats_table(compute_stats(open_run(cfg.output.dir))))
    print(f"\nshards in {Path(cfg.output.dir) / 'shards'}; try: prolongvid stats {cfg.output.dir} --verify --plots {cfg.output.dir}/plots")
    return 0
