"""Trainer throughput on CPU with the tiny model: the real trainer against its own compute alone, same run.

  trainer   `train.trainer.train` on the pipeline's shards: data from the shards (JPEG decode, prompt,
            labels) in one loader worker, forward + backward + AdamW, logging, one training process, fp32;
  compute   the same model and optimizer on one real batch held in memory, the same steps: what the
            step costs with no data loading and no trainer around it;
  ddp/fsdp  the trainer with 2 ranks (gloo) under each parallel mode, through `prolongvid train`;
  bucketed / packed
            the trainer on a mix of frame counts (8, 16, 32) and answer lengths (a word to ~400 words), batch 4:
            bucketed batches stack items of one frame count and pad to the longest; packed ones lay them end to
            end (`data.packing`). Tokens/s counts real tokens only, so padding and half-full buckets cost.
Target: trainer / compute >= 0.9 (the loader and the loop hide behind the step). On a GPU the number that
matters is MFU with a 7B-shaped model: `bench/train.py --gpu` (`bench/train_gpu.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TURNS = [{"from": "human", "value": "<image>\nWhat happens in the video?"},
         {"from": "gpt", "value": "A test pattern moves across the screen while a clock counts the seconds."}]


def make_shards(work: Path, n: int) -> Path:
    from fixtures.videos import SynthVideo, make_video
    from pipeline.run_config import load_run_config
    from pipeline.run import run_pipeline

    out = work / "out"
    if (out / "index.parquet").exists():
        return out
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(SynthVideo(f"t{i}", duration_s=20 + i, width=320, height=180, fps=10, audio=False), videos)
    records = [{"id": f"t{i}-{k}", "video": f"t{i}.mp4", "conversations": TURNS} for i in range(n) for k in range(2)]
    (videos / "ann.json").write_text(json.dumps(records))
    cfg = load_run_config(None, [f"input.path={videos / 'ann.json'}", "input.format=llava", f"output.dir={out}",
                             "filters.visual.enabled=false", "ray.progress=false", "llm.enabled=false", "shards.max_samples=1",
                             "sampling.sets=[{name: shard, mode: uniform, num_frames: 64, resize: {size: 64}}]"])  # fmt: skip
    run_pipeline(cfg)
    return out


# Short QA answers beside a detailed description, as long-video instruction data mixes them.
ANSWERS = ["Yes.", "A test pattern moves across the screen.",
           "A test pattern moves across the screen while a clock counts the seconds; " * 30]  # fmt: skip


def make_mixed_shards(work: Path, n: int) -> Path:
    """`n` videos of 8, 16 or 32 s stored at 1 frame a second, two conversations each with answers of 1 to ~400 words."""
    from fixtures.videos import SynthVideo, make_video
    from pipeline.run_config import load_run_config
    from pipeline.run import run_pipeline

    out = work / f"mixed{n}"
    if (out / "index.parquet").exists():
        return out
    videos = work / f"mixed{n}_videos"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(SynthVideo(f"m{i}", duration_s=8 * 2 ** (i % 3), width=160, height=90, fps=5, audio=False), videos)
    records = [{"id": f"m{i}-{k}", "video": f"m{i}.mp4",
                "conversations": [TURNS[0], {"from": "gpt", "value": ANSWERS[(i + k) % 3]}]}
               for i in range(n) for k in range(2)]  # fmt: skip
    (videos / "ann.json").write_text(json.dumps(records))
    cfg = load_run_config(None, [f"input.path={videos / 'ann.json'}", "input.format=llava", f"output.dir={out}",
                             "filters.visual.enabled=false", "ray.progress=false", "llm.enabled=false",
                             "shards.max_samples=2",
                             "sampling.sets=[{name: shard, mode: fps, fps: 1, max_frames: 32, resize: {size: 64}}]"])  # fmt: skip
    run_pipeline(cfg)
    return out


def mixed(shards: Path, steps: int, packing: bool) -> dict:
    """The trainer on the mixed shards, batch 4, bucketed by frame count (the default) or packed."""
    from pipeline.core.config_load import load_config
    from train.config import TrainConfig
    from train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        sets = train_sets(shards, Path(tmp), steps, 32) + ["data.frame_count=up_to_stored", "data.batch_size=4",
                                                          f"data.packing={str(packing).lower()}"]  # fmt: skip
        history = train(load_config(ROOT / "configs/train/tiny_debug.yaml", sets, model=TrainConfig))["history"][3:]
    return {"tokens_per_s": sum(h["tokens"] for h in history) / sum(h["step_s"] for h in history),
            "step_s": statistics.median(h["step_s"] for h in history),
            "data_wait_s": statistics.median(h["data_wait_s"] for h in history)}  # fmt: skip


def train_sets(shards: Path, out: Path, steps: int, frames: int) -> list[str]:
    return [f"data.shards={shards}", f"output.dir={out}", f"optim.max_steps={steps}", f"data.frames={frames}",
            "output.log_every=1", f"output.save_every={steps * 10}", "data.shuffle_buffer=0",
            "data.num_workers=1"]  # fmt: skip  # one loader process prefetches while the step runs


def trainer(shards: Path, steps: int, frames: int) -> dict:
    from pipeline.core.config_load import load_config
    from train.config import TrainConfig
    from train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs/train/tiny_debug.yaml", train_sets(shards, Path(tmp), steps, frames),
                          model=TrainConfig)  # fmt: skip
        history = train(cfg)["history"][3:]  # the first steps warm up allocators and threads
    return {"tokens_per_s": statistics.median(h["tokens_per_s"] for h in history),
            "step_s": statistics.median(h["step_s"] for h in history),
            "data_wait_s": statistics.median(h["data_wait_s"] for h in history)}  # fmt: skip


def compute_only(shards: Path, steps: int, frames: int) -> dict:
    """Forward + backward + AdamW on one batch held in memory: the trainer's step without the trainer."""
    import torch

    from pipeline.core.config_load import load_config

    from train.chat import ChatEncoder
    from train.config import TrainConfig
    from train.model import tokens_per_frame
    from train.batching import DataStream
    from train import optim
    from train.loss import summed_loss
    from train.trainer import load_parts, prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs/train/tiny_debug.yaml", train_sets(shards, Path(tmp), steps, frames),
                          model=TrainConfig)  # fmt: skip
        torch.manual_seed(cfg.seed)
        tokenizer, model = load_parts(cfg)
        prepare(cfg, model, None)
        encoder = ChatEncoder(tokenizer, video_token=cfg.model.video_token)
        stream = DataStream(cfg, encoder, tokenizer.pad_token_id, tokens_per_frame=tokens_per_frame(model.config))
        batch = next(stream.batches())
        batch.pop("ids")
        model.train()
        optimizer = optim.build_optimizer(model, cfg.optim.lr.model_dump(), cfg.optim.betas, cfg.optim.weight_decay)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            loss = summed_loss(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times[3:])
    return {"tokens_per_s": int(batch["attention_mask"].sum()) / step_s, "step_s": step_s, "data_wait_s": 0.0}


def two_ranks(shards: Path, steps: int, frames: int, parallel: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sets = train_sets(shards, Path(tmp), steps, frames) + ["nproc_per_node=2", f"parallel={parallel}"]
        done = subprocess.run([sys.executable, "-m", "pipeline", "train", str(ROOT / "configs/train/tiny_debug.yaml"),
                               *[x for s in sets for x in ("--set", s)]], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        history = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()][3:]
    return {"tokens_per_s": statistics.median(h["tokens_per_s"] for h in history),
            "step_s": statistics.median(h["step_s"] for h in history),
            "data_wait_s": statistics.median(h["data_wait_s"] for h in history)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--gpu" in argv:  # one GPU, a 7B-shaped model: bench/train_gpu.py
        from bench.train_gpu import main as gpu_main

        return gpu_main([a for a in argv if a != "--gpu"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="8 steps, no 2-rank runs")
    parser.add_argument("--packing", action="store_true", help="only the packed vs bucketed comparison")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache" / "train")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 8
    import ray

    from pipeline.ray_local import start_local_ray

    start_local_ray(dict(num_cpus=2, include_dashboard=False, log_to_driver=False))  # loopback, behind a run token
    try:
        shards = make_shards(args.workdir, 4)
        mixed_shards = make_mixed_shards(args.workdir, 6 if args.quick else 12)
    finally:
        ray.shutdown()
    results, targets = {}, []
    if not args.packing:
        results = {"trainer": trainer(shards, args.steps, args.frames),
                   "compute": compute_only(shards, args.steps, args.frames)}  # fmt: skip
        ratio = results["trainer"]["tokens_per_s"] / results["compute"]["tokens_per_s"]
        targets.append(target("trainer tokens/s / compute-only tokens/s (1 process)", ratio, ">=", 0.9))
    if not args.quick and not args.packing:
        for parallel in ("ddp", "fsdp"):
            results[f"2 ranks {parallel}"] = two_ranks(shards, args.steps, args.frames, parallel)
    results["mixed bucketed"] = mixed(mixed_shards, args.steps, packing=False)
    results["mixed packed"] = mixed(mixed_shards, args.steps, packing=True)
    ratio = results["mixed packed"]["tokens_per_s"] / results["mixed bucketed"]["tokens_per_s"]
    targets.append(target("packed tokens/s / bucketed tokens/s (mixed frames and lengths)", ratio, ">=", 1.0))
    out = {"machine": machine(("torch", "transformers")), "frames": args.frames, "steps": args.steps,
           "results": results, "targets": targets}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    rows = [[name, f"{r['tokens_per_s']:.0f}", f"{r['step_s']:.3f}", f"{r['data_wait_s']:.4f}"] for name, r in results.items()]
    print(f"tiny LLaVA-OneVision on CPU, fp32, {args.steps - 3} steps after 3 of warmup; trainer/compute/2 ranks: "
          f"{args.frames} frames, batch 1; mixed: 8-32 frames, batch 4 (tokens/s: real tokens over the steps' time)")
    print(table(["", "tokens/s", "step s", "data wait s"], rows))
    print()
    print(targets_table(targets))
    shutil.rmtree(args.workdir / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
