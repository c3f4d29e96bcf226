"""The trainer's step on one GPU with a LLaVA-OneVision-shaped random model: step time, tokens/s, peak memory, MFU.

Builds the largest Qwen2.5-shaped language model that trains on the device (7B, else 3B, else 1.5B: tried in
that order, the first that completes its steps wins) with a SigLIP-so400m-shaped tower at 384 px (frozen, as
the paper trains), random weights in the trainer's precision (trainable parts fp32 master weights, frozen ones
bf16, bf16 autocast), activation checkpointing, and the best attention kernel present (flash-attention 2 when
installed, else SDPA). Each step is the trainer's: forward, the per-sample loss (`train/loss.py`), backward,
clipping, AdamW. One sample of `--frames` frames (156 tokens each) and a 512-token conversation a step.

MFU counts the model's FLOPs, not the recomputation: 6 x trainable LM and projector parameters x tokens, the
causal attention (6 x layers x tokens^2 x hidden, halved), and the frozen tower's forward (2 x its parameters
x patches); over the device's dense bf16 peak (H100/H200 989 TFLOPS, A100 312; `--peak-tflops` otherwise).
Target MFU >= 40%. `--shape tiny --device cpu` runs the same code in seconds (the test suite does).

  python bench/train_gpu.py [--frames 128] [--steps 6] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402

# Qwen2.5 language models (hidden, intermediate, layers, heads, kv heads, vocab), largest first.
SHAPES = {
    "7b": (3584, 18944, 28, 28, 4, 152064),
    "3b": (2048, 11008, 36, 16, 2, 151936),
    "1.5b": (1536, 8960, 28, 12, 2, 151936),
    "tiny": (64, 128, 2, 4, 2, 512),
}
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
TEXT_TOKENS = 512


def build(shape: str, device: Any, attention: str) -> Any:
    """A random VideoLlava of `shape` on `device`, in the trainer's precision; the vision tower frozen."""
    import torch
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    from train import optim
    from train.model import VideoLlava

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    if shape == "tiny":
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=56, patch_size=8)  # fmt: skip
        pool = 4
    else:
        vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                    num_attention_heads=16, image_size=384, patch_size=14)  # fmt: skip
        pool = 12
    text = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=131072,
                       rope_theta=1e6, tie_word_embeddings=False)  # fmt: skip
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=vocab - 2,
                                  video_token_id=vocab - 1, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full")  # fmt: skip
    config.video_pool_size = pool
    with torch.device(device):
        model = VideoLlava._from_config(config, attn_implementation=attention, dtype=torch.bfloat16)
    rates = {"vision_tower": 0.0, "projector": 1e-5, "language_model": 1e-5}
    optim.freeze(model, rates)
    optim.set_precision(model, "bf16")
    if shape != "tiny":
        model.gradient_checkpointing_enable()
    return model.train(), rates


def batch(model: Any, frames: int, device: Any) -> dict[str, Any]:
    """One sample: the video's tokens after a short prompt, then the conversation; the answer's 128 tokens supervised."""
    import torch

    from train.chat import IGNORE
    from train.model import tokens_per_frame

    cfg = model.config
    vocab, size = cfg.text_config.vocab_size, cfg.vision_config.image_size
    video = frames * tokens_per_frame(cfg)
    ids = torch.randint(0, vocab - 2, (1, 16 + video + TEXT_TOKENS), device=device)
    ids[0, 16:16 + video] = cfg.video_token_id
    labels = torch.full_like(ids, IGNORE)
    labels[0, -128:] = ids[0, -128:]
    pixels = torch.randn(1, frames, 3, size, size, device=device, dtype=torch.bfloat16)
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pixels}


def model_flops(model: Any, tokens: int, frames: int) -> float:
    """FLOPs of one training step, recomputation not counted (see the module's docstring)."""
    text, vision = model.config.text_config, model.config.vision_config
    lm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    tower = sum(p.numel() for p in model.model.vision_tower.parameters())
    patches = frames * (vision.image_size // vision.patch_size) ** 2
    attention = 6 * text.num_hidden_layers * tokens * tokens * text.hidden_size / 2
    return 6 * lm * tokens + 6 * projector * patches + attention + 2 * tower * patches


def run_shape(shape: str, frames: int, steps: int, device: Any, attention: str) -> dict[str, Any]:
    import torch

    from train import optim
    from train.loss import count_units, summed_loss

    model, rates = build(shape, device, attention)
    optimizer = optim.build_optimizer(model, rates, (0.9, 0.999), 0.0)
    inputs = batch(model, frames, device)
    units = count_units(inputs["labels"], "sample")
    cuda = device.type == "cuda"
    times = []
    for _ in range(steps + 2):  # two warmup steps: allocator, kernels' autotuning
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with optim.autocast(device, "bf16", False):
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            loss = summed_loss(logits, inputs["labels"], "sample") / units
        del logits
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = sorted(times[2:])[len(times[2:]) // 2]
    tokens = int(inputs["input_ids"].shape[1])
    return {"shape": shape, "frames": frames, "tokens": tokens, "step_s": round(step_s, 4),
            "tokens_per_s": round(tokens / step_s, 1), "flops_per_step": model_flops(model, tokens, frames),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "loss": round(float(loss.detach()), 4), "attention": attention}  # fmt: skip


def best_attention(device: Any) -> str:
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def peak_flops(device: Any, given: float | None) -> float | None:
    import torch

    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--shape", choices=list(SHAPES), help="one shape only (default: the largest that fits)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, when not known here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    attention = best_attention(device)
    tried, result = [], None
    for shape in [args.shape] if args.shape else [s for s in SHAPES if s != "tiny"]:
        try:
            result = run_shape(shape, args.frames, args.steps, device, attention)
            break
        except torch.OutOfMemoryError as e:
            tried.append({"shape": shape, "error": str(e).splitlines()[0][:200]})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    if result is None:
        print(json.dumps({"error": "no shape fits", "tried": tried}))
        return 1
    peak = peak_flops(device, args.peak_tflops)
    result["mfu"] = round(result["flops_per_step"] / result["step_s"] / peak, 4) if peak else None
    targets = [target("MFU", result["mfu"], ">=", 0.4)] if result["mfu"] is not None else []
    info = machine(("torch", "transformers", "flash_attn"))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    out = {"machine": info, "result": result, "did_not_fit": tried, "targets": targets}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{result['shape']} Qwen2.5-shaped LM + SigLIP-so400m-shaped tower (frozen), bf16 over fp32 master weights, "
          f"{result['attention']}, {args.frames} frames, median of {args.steps} steps; too big: "
          f"{', '.join(t['shape'] for t in tried) or 'none'}")  # fmt: skip
    print(table(["tokens", "step s", "tokens/s", "peak GiB", "MFU"],
                [[str(result["tokens"]), f"{result['step_s']:.3f}", f"{result['tokens_per_s']:.0f}",
                  str(result["peak_memory_gib"]), str(result["mfu"])]]))  # fmt: skip
    if targets:
        print()
        print(targets_table(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
