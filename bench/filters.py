"""Filter benchmark: cheap visual checks and CLIP scores per video, and corpus dedup time against N.

  floor   CPU seconds of `extract_frames` on one video with the default frame sets (the work the
          filters ride on: they read the frames it already made, never the file);
  cheap   CPU seconds of the visual checks (blank, brightness, motion, scene cuts, sharpness) on that
          video's caption frames;
  clip    seconds for the CLIP stage's work on one video on CPU: 32 shard frames through open_clip
          ViT-B-32 (random weights: the same compute as real ones), plus the aesthetic head;
  dedup   `find_duplicates` on synthetic clustered embeddings (1% planted near-copies) at N = 10K,
          100K, 1M (quick: 10K, 100K): HNSW (faiss) and, up to 100K, exact blocked products.

Targets, same run: cheap / floor <= 0.10; HNSW dedup time(1M) / time(100K) <= 15 (all pairs grow
100x); planted duplicates found >= 99% at every N.
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
import numpy as np  # noqa: E402

from filters.dedup import find_duplicates  # noqa: E402
from filters.visual import visual_scores  # noqa: E402
from filters.config import ClipFilterConfig, DedupConfig  # noqa: E402
from fixtures.videos import SynthVideo, make_video  # noqa: E402
from pipeline.run_config import load_run_config
from pipeline.video.extract import extract_frames  # noqa: E402
from pipeline.video.probe import preflight  # noqa: E402


def cpu_median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def synthetic_corpus(n: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Clustered unit vectors with 1% near-copies (noise 0.01) of random originals."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(10, n // 1000), dim), dtype=np.float32)
    base = centres[rng.integers(0, len(centres), n)] * 0.4 + rng.standard_normal((n, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    dups = max(1, n // 100)
    src = rng.choice(n, dups, replace=False)
    copies = base[src] + 0.01 * rng.standard_normal((dups, dim), dtype=np.float32)
    keys = [f"v{i:07d}" for i in range(n + dups)]
    return keys, np.concatenate([base, copies]), {keys[n + i]: keys[s] for i, s in enumerate(src)}


def bench_dedup(sizes: list[int], dim: int) -> list[dict]:
    rows = []
    for n in sizes:
        keys, emb, truth = synthetic_corpus(n, dim)
        for method in ("ann", "exact"):
            if method == "exact" and n > 100_000:
                continue
            start = time.perf_counter()
            found = find_duplicates(keys, emb, DedupConfig(method=method))
            seconds = time.perf_counter() - start
            got = {d.removed: d.kept for d in found}
            recall = sum(got.get(k) == v for k, v in truth.items()) / len(truth)
            rows.append({"n": n, "dim": dim, "method": method, "seconds": round(seconds, 3), "recall": round(recall, 4),
                         "false_removals": len(set(got) - set(truth))})
        del emb
    return rows


def bench_clip(jpegs: list[bytes], repeats: int) -> dict:
    from filters.clip_scores import ClipModel, build_aesthetic_head

    cfg = ClipFilterConfig(enabled=True, arch="ViT-B-32", device="cpu")
    start = time.perf_counter()
    model = ClipModel(cfg)
    model.head = build_aesthetic_head(model.model.visual.output_dim).eval()
    load_s = time.perf_counter() - start
    frames = [jpegs[i] for i in np.linspace(0, len(jpegs) - 1, cfg.max_frames, dtype=int)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.aesthetic(model.encode_images(frames))
        times.append(time.perf_counter() - start)
    per_video = statistics.median(times)
    return {"model": "ViT-B-32 (random weights)", "frames": len(frames), "load_s": round(load_s, 2),
            "seconds_per_video": round(per_video, 3), "videos_per_s": round(1 / per_video, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-minute video, one repeat")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    parser.add_argument("--dim", type=int, default=128, help="embedding size of the synthetic dedup corpus")
    args = parser.parse_args(argv)
    seconds, repeats = (60, 1) if args.quick else (300, 3)
    spec = SynthVideo(name=f"bench_{seconds // 60}min_640x360", duration_s=seconds, width=640, height=360, fps=30,
                      codec="h264", audio=False, keyint=None)
    path = make_video(spec, args.workdir)
    rows, targets = [], []
    for backend in ("decord", "pyav"):
        cfg = load_run_config(None, ["input.path=.", "output.dir=.", f"decode.backend={backend}", "decode.threads=1"])
        info = preflight(path, cfg.probe, cfg.limits)
        result = extract_frames(info, cfg.sampling, cfg.decode)
        floor = cpu_median(lambda: extract_frames(info, cfg.sampling, cfg.decode), repeats)
        frames = result.sets[cfg.visual_frame_set].jpegs
        visual = cfg.filters.visual
        cheap = cpu_median(lambda: visual_scores(frames, visual), max(repeats, 3))
        rows.append({"backend": backend, "floor_s": round(floor, 4), "cheap_s": round(cheap, 4),
                     "frames_checked": min(len(frames), visual.max_frames), "cheap_videos_per_s": round(1 / cheap, 1),
                     "ratio": round(cheap / floor, 4)})
        default = load_run_config(None, ["input.path=.", "output.dir=."]).decode.backend
        targets.append(target(f"filters/cheap_vs_decode_floor{'' if backend == default else '[' + backend + ']'}",
                              cheap / floor, "<=", 0.10))
    clip = bench_clip(result.sets[cfg.shards.frame_set].jpegs, repeats)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    dedup = bench_dedup(sizes, args.dim)
    ann = {r["n"]: r for r in dedup if r["method"] == "ann"}
    if 1_000_000 in ann:
        targets.append(target("dedup/ann_time_1m_vs_100k", ann[1_000_000]["seconds"] / ann[100_000]["seconds"], "<=", 15))
    targets += [target(f"dedup/{r['method']}_recall_{r['n'] // 1000}k", r["recall"], ">=", 0.99) for r in dedup]
    report = {"machine": machine(), "config": {"video_s": seconds, "size": "640x360@30", "dedup_dim": args.dim},
              "results": rows, "clip": clip, "dedup": dedup, "targets": targets}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"one {seconds}s 640x360 30fps H.264 video; CPU seconds, median of {repeats}\n")
    print(table(["decode backend", "decode floor s", "cheap filters s", "frames checked", "videos/s (cheap)", "ratio"],
                [[r["backend"], f"{r['floor_s']:.3f}", f"{r['cheap_s']:.4f}", str(r["frames_checked"]),
                  f"{r['cheap_videos_per_s']:.0f}", f"{r['ratio']:.3f}"] for r in rows]))
    print(f"\nCLIP stage on CPU, {clip['model']}: {clip['frames']} frames a video in {clip['seconds_per_video']:.2f}s "
          f"= {clip['videos_per_s']:.2f} videos/s (model load {clip['load_s']:.1f}s once per actor)\n")
    print(table(["dedup N", "dim", "method", "seconds", "recall", "false removals"],
                [[f"{r['n']:,}", str(r["dim"]), r["method"], f"{r['seconds']:.2f}", f"{r['recall']:.4f}",
                  str(r["false_removals"])] for r in dedup]))
    print()
    print(targets_table(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
