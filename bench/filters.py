"""Filter benchmark: what the cheap visual checks cost per video against the per-video decode floor.

  floor   CPU seconds of `extract_frames` on one video with the default frame sets (the work the
          filters ride on: they read the frames it already made, never the file);
  cheap   CPU seconds of the visual checks (blank, brightness, motion, scene cuts, sharpness) on that
          video's caption frames, median of --repeats.

Target: cheap / floor <= 0.10. (CLIP scores and corpus dedup are measured here once they exist.)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402
from filters.visual import visual_scores  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.extract import extract_frames  # noqa: E402
from pipeline.probe import preflight  # noqa: E402
from pipeline.synth import SynthVideo, make_video  # noqa: E402


def cpu_median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-minute video, one repeat")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    seconds, repeats = (60, 1) if args.quick else (300, 3)
    spec = SynthVideo(name=f"bench_{seconds // 60}min_640x360", duration_s=seconds, width=640, height=360, fps=30,
                      codec="h264", audio=False, keyint=None)
    path = make_video(spec, args.workdir)
    rows, targets = [], []
    for backend in ("decord", "pyav"):
        cfg = load_config(None, ["input.path=.", "output.dir=.", f"decode.backend={backend}", "decode.threads=1"])
        info = preflight(path, cfg.probe, cfg.limits)
        result = extract_frames(info, cfg.sampling, cfg.decode)
        floor = cpu_median(lambda: extract_frames(info, cfg.sampling, cfg.decode), repeats)
        frames = result.sets[cfg.visual_frame_set].jpegs
        visual = cfg.filters.visual
        cheap = cpu_median(lambda: visual_scores(frames, visual), max(repeats, 3))
        rows.append({"backend": backend, "floor_s": round(floor, 4), "cheap_s": round(cheap, 4),
                     "frames_checked": min(len(frames), visual.max_frames), "cheap_videos_per_s": round(1 / cheap, 1),
                     "ratio": round(cheap / floor, 4)})
        default = load_config(None, ["input.path=.", "output.dir=."]).decode.backend
        targets.append(target(f"filters/cheap_vs_decode_floor{'' if backend == default else '[' + backend + ']'}",
                              cheap / floor, "<=", 0.10))
    report = {"machine": machine(), "config": {"video_s": seconds, "size": "640x360@30"}, "results": rows,
              "targets": targets}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"one {seconds}s 640x360 30fps H.264 video; CPU seconds, median of {repeats}\n")
    print(table(["decode backend", "decode floor s", "cheap filters s", "frames checked", "videos/s (cheap)", "ratio"],
                [[r["backend"], f"{r['floor_s']:.3f}", f"{r['cheap_s']:.4f}", str(r["frames_checked"]),
                  f"{r['cheap_videos_per_s']:.0f}", f"{r['ratio']:.3f}"] for r in rows]))
    print()
    print(targets_table(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
