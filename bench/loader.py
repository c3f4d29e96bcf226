"""Loader benchmark: 128-frame training items/s from our shards against the seed's way, same run.

Every video has 17 QA conversations (about what the paper's data has); an item is one conversation.
  permutation        `train.data.training_items` over `train.order.permuted_samples` by (video, conversation)
                     item, the paper's order: 128 stored frames (of 192 at 384x384) read, one batched JPEG decode,
                     SigLIP normalisation, the Qwen prompt tokenised; decoded frames cached as configured
                     (`data.frame_cache_mb`, default 1024) or with only the newest video kept (`newest only`: a
                     large dataset, where an item's video is almost never the one a worker decoded last);
  video_permutation  the same by video: a video's conversations in a row, its frames decoded once;
  seed               the paper's loader, per conversation: decord VideoReader(num_threads=1) on the source mp4,
                     get_batch of linspace(0, N-1, 128), then transformers' SiglipImageProcessor.

One process each, no workers, medians of --repeats passes over N generated 3-minute 640x360 videos.
Targets: permutation (newest only) / seed >= 10; permutation / video_permutation >= 0.9, at scale (newest only:
each item decodes its frames, ~1/17 of the video order's decodes shared) and on this small set (all cached).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402
from fixtures.videos import SynthVideo, make_video  # noqa: E402
from pipeline.run_config import load_run_config
from pipeline.video.decoders import import_decord  # noqa: E402
from pipeline.run import run_pipeline  # noqa: E402

FRAMES = 128
CONVERSATIONS = 17


def turns(n: int) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\nQuestion {n}: what happens in the video?"},
            {"from": "gpt", "value": f"Answer {n}: a test pattern moves across the screen."}]


def make_shards(work: Path, n: int, seconds: int) -> tuple[list[Path], Path]:
    spec = SynthVideo(name=f"bench_{seconds}s_640x360", duration_s=seconds, width=640, height=360, fps=30,
                      codec="h264", audio=False)
    source = make_video(spec, work.parent)
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(videos / f"v{i}.mp4")
        shutil.copy(source, paths[-1])
    records = [{"id": f"{p.stem}-{n}", "video": p.name, "conversations": turns(n)}
               for p in paths for n in range(CONVERSATIONS)]
    (videos / "ann.json").write_text(json.dumps(records))
    cfg = load_run_config(None, [f"input.path={videos / 'ann.json'}", "input.format=llava", f"output.dir={work / 'out'}",
                             "filters.visual.enabled=false", "ray.progress=false",
                             "sampling.sets=[{name: shard, mode: uniform, num_frames: 192}]"])
    run_pipeline(cfg)
    return paths, work / "out"


LOADERS = {"permutation": ("conversation", None), "permutation, newest only": ("conversation", 0),
           "video_permutation": ("video", None)}  # (items by, data.frame_cache_mb; None: the default)


def ours(run_dir: Path, loader: str, epoch: int) -> tuple[float, int]:
    from fixtures.tiny_train_model import build_tokenizer
    from pipeline.core.video_tokens import TOKENS_PER_FRAME
    from train.chat import ChatEncoder
    from train.data import DataConfig, training_items
    from train.order import permuted_samples

    by, cache_mb = LOADERS[loader]
    encoder = ChatEncoder(build_tokenizer(), video_token="<video>")
    cfg = DataConfig(shards=str(run_dir), frames=FRAMES, **({} if cache_mb is None else {"frame_cache_mb": cache_mb}))
    start = time.perf_counter()
    samples = permuted_samples(str(run_dir), 0, None, epoch, by)
    n = sum(1 for _ in training_items(samples, cfg, encoder, tokens_per_frame=TOKENS_PER_FRAME))  # the 7B's
    return time.perf_counter() - start, n


def seed(paths: list[Path]) -> tuple[float, int]:
    """The paper decodes the video for each conversation: one pass per video times one item's cost."""
    from transformers import SiglipImageProcessor

    decord = import_decord()
    processor = SiglipImageProcessor(size={"height": 384, "width": 384})
    start = time.perf_counter()
    for path in paths:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        frames = vr.get_batch(np.linspace(0, len(vr) - 1, FRAMES, dtype=int)).asnumpy()
        processor.preprocess(list(frames), return_tensors="pt")
    return time.perf_counter() - start, len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1-minute videos, fewer, one repeat")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    n, seconds, repeats = (2, 60, 1) if args.quick else (4, 180, 3)
    work = args.workdir / f"loader_{seconds}s_{n}"
    shutil.rmtree(work, ignore_errors=True)
    paths, run_dir = make_shards(work, n, seconds)
    times: dict[str, list[float]] = {name: [] for name in [*LOADERS, "seed"]}
    ours(run_dir, "video_permutation", 0)  # warm up: imports and first-touch costs land outside the timings
    for epoch in range(repeats):  # interleaved
        for name in LOADERS:
            t, count = ours(run_dir, name, epoch)
            assert count == n * CONVERSATIONS, (name, count)
            times[name].append(count / t)
        t, count = seed(paths)
        times["seed"].append(count / t)
    rate = {k: statistics.median(v) for k, v in times.items()}
    report = {"machine": machine(),
              "config": {"videos": n, "video_s": seconds, "frames": FRAMES, "conversations": CONVERSATIONS,
                         "repeats": repeats},
              "results": [{"loader": k, "items_per_s": round(v, 3)} for k, v in rate.items()],
              "targets": [target("loader/permutation_newest_only_vs_seed_items_per_s",
                                 rate["permutation, newest only"] / rate["seed"], ">=", 10),
                          target("loader/permutation_newest_only_vs_video_permutation_items_per_s",
                                 rate["permutation, newest only"] / rate["video_permutation"], ">=", 0.9),
                          target("loader/permutation_cached_vs_video_permutation_items_per_s",
                                 rate["permutation"] / rate["video_permutation"], ">=", 0.9)]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{n} x {seconds}s 640x360 videos, {CONVERSATIONS} conversations each, {FRAMES} frames an item, "
          f"median of {repeats}\n")
    print(table(["loader", "items/s", "vs seed"],
                [[k, f"{v:.2f}", f"{v / rate['seed']:.1f}"] for k, v in rate.items()]))
    print()
    print(targets_table(report["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
