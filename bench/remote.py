"""Remote storage benchmark: the same work with its data on an S3 API server (moto, loopback) and on local disk,
measured in the same run. The server shares this host's cores with the work, so its own CPU cost is counted.

  pipeline  `run_pipeline` (llm off) on N copies of a video, four runs (input / output): the local folder /
            local disk, `s3://bench/videos/` (no `input.allowed_roots`) / local disk, the bucket / the bucket
            (`output.dir=s3://bench/out-<n>/`, a fresh prefix: each shard written in scratch, uploaded and
            committed by its ledger record, then the tables, shards.json and run.json put there), the local
            folder / local disk again: the mean of the two local runs is the baseline (this host's speed drifts;
            the drift is printed). An untimed local run goes first: the first run pays for starting Ray's
            workers. The server's access log gives each run's requests by method (a listing page is one LIST);
            the fetch stage's bytes count each whole-object GET of a video at its size (the log gives no byte
            counts). For the bucket / bucket run: its requests under the output prefix per committed shard and
            per video (those on the shards' own tars and records apart: the part that grows with the shards),
            and the bytes stored there (the shards, and every other object at its final size).
  fetch     a short and a long low-resolution video (h264, encoder's keyframe interval, index at the end),
            two ways to get the default sampling's frames (`sampling.sets`: every set's frames, and the shard
            set alone, planned by `plan_frame_set` on the video's constant-rate index):
              full copy  `pipeline.video.fetch.fetch` to local disk (HEAD + one GET), then the frames decoded
                         from the copy;
              ranged     PyAV over `shards.remote.RangedFile` (ranged GETs with 64 KiB read-ahead).
            Both decode the same way: seek (to the keyframe before) when the next time lies over a keyframe
            interval ahead, else decode on, one thread, no resize or JPEG. The numbers only, no verdict.
            "server ms/GET" is the median 64 KiB ranged GET of the object: moto's cost per request grows with
            the object's size, so ranged wall times here say more about the server than about S3.
  train     `train.trainer.train` (tiny model, one torch thread, `data.num_workers=0`) on the pipeline's shards
            on disk and in the bucket, `data.order` shard_shuffle and permutation, each order local, s3, local
            again (the mean of the two local runs is the base), after an untimed short run; samples/s over the
            steps after 3 of warmup, and the requests and bytes the trainer's storage calls made (counted in
            this process).
Targets: s3 / local >= 0.9 for pipeline videos/hour (input and output in the bucket; input alone) and for
each order's training samples/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402
from bench.remote_parts import (BUCKET, by_kind, by_status, counted_storage, decode_at, request_ms,  # noqa: E402
                                sampling_times, server_requests, under)
from fixtures.s3server import make_bucket, s3_env, s3_server, upload_tree  # noqa: E402
from fixtures.videos import SynthVideo, make_video  # noqa: E402
from pipeline.core.storage import Storage, is_remote  # noqa: E402
from pipeline.run_config import load_run_config  # noqa: E402
from shards.layout import RUN_FILE, SHARDS_DIR, SHARDS_FILE  # noqa: E402
from shards.remote_ledger import RECORDS  # noqa: E402

log = logging.getLogger("bench.remote")
WARMUP = 3  # training steps left out of the rates: allocators, threads and the first opens


# ------------------------------------------------------------------------------------------------- pipeline

ORDER = (("local", "local"), ("s3", "local"), ("s3", "s3"), ("local", "local"))  # (input, output) of the timed runs


def where(location: str) -> str:
    return "s3" if is_remote(location) else "local"


def pipeline_run(source: str, out: str, cpus: int) -> dict:
    cfg = load_run_config(None, [f"input.path={source}", f"output.dir={out}", "llm.enabled=false", "ray.progress=false",
                                 f"ray.num_cpus={cpus}", "shards.max_samples=8"])  # fmt: skip
    from pipeline.run import run_pipeline
    from pipeline.run_remote import logs_dir

    summary = run_pipeline(cfg)  # every output folder is a fresh one
    this = json.loads(Storage(out).get(RUN_FILE))["this_run"]
    if is_remote(out):  # a remote run's logs stay on this node, outside the work folder
        shutil.rmtree(logs_dir(out.rstrip("/")), ignore_errors=True)
    return {"input": where(source), "output": where(out), "videos": summary.accepted, "rejected": summary.rejected,
            "wall_s": round(summary.wall_s, 2), "window_s": this["window_s"],
            "videos_per_hour": round(summary.videos_per_hour, 1),
            "stage_s": {k: v["seconds"] for k, v in this["stages"].items()}}  # fmt: skip


def fetched_bytes(requests: list[tuple[str, str, str]], sizes: dict[str, int]) -> int:
    """Bytes of the whole-object GETs of the input videos (each counted at its size)."""
    return sum(sizes[key.removeprefix("videos/")] for kind, key, status in requests
               if kind == "GET" and status == "200" and key.startswith("videos/"))  # fmt: skip


def output_cost(url: str, requests: list[tuple[str, str, str]], videos: int, sizes: dict[str, int]) -> dict:
    """What a run with its output in the bucket cost the store: its requests by kind under the output prefix (those
    on the shards' own tars and records apart) and under the input's, the committed shards (shards.json) and the
    bytes stored under the prefix."""
    store = Storage(url)
    shards = json.loads(store.get(SHARDS_FILE))
    stored = sum(info.size for page in store.list_pages() for info in page)
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    mine = under(requests, prefix, bulk_deletes=True)  # the run deletes nothing but under its output prefix
    own = [r for r in under(mine, f"{prefix}{SHARDS_DIR}/", f"{prefix}{RECORDS}") if r[0] != "LIST"]
    shard_bytes = sum(s["bytes"] for s in shards)
    return {"url": url, "videos": videos, "shards": len(shards), "shard_bytes": shard_bytes,
            "other_bytes": stored - shard_bytes, "requests": by_kind(mine), "shard_object_requests": by_kind(own),
            "statuses": by_status(mine), "input_requests": by_kind(under(requests, "videos/")),
            "fetched_bytes": fetched_bytes(requests, sizes)}  # fmt: skip


def bench_pipeline(videos: Path, log_file: Path, work: Path, cpus: int) -> dict:
    sizes = {p.name: p.stat().st_size for p in videos.iterdir()}
    upload_tree(videos, f"s3://{BUCKET}/videos")
    sources = {"local": str(videos), "s3": f"s3://{BUCKET}/videos/"}
    warm = {**pipeline_run(sources["local"], str(work / "out-0"), cpus), "warm_up": True}  # Ray's workers start
    runs, outs, seen = [], [], []
    for i, (source, output) in enumerate(ORDER, 1):
        outs.append(f"s3://{BUCKET}/out-{i}/" if output == "s3" else str(work / f"out-{i}"))
        since = log_file.stat().st_size
        runs.append(pipeline_run(sources[source], outs[-1], cpus))
        seen.append(server_requests(log_file, since))
    local1, s3_in, s3_both, local2 = runs
    base = (local1["videos_per_hour"] + local2["videos_per_hour"]) / 2
    copied = fetched_bytes(seen[1], sizes)
    return {"runs": [warm, *runs], "local_mean_videos_per_hour": round(base, 1),
            "local_drift": round(local2["videos_per_hour"] / local1["videos_per_hour"], 3),
            "s3_in_vs_local": round(s3_in["videos_per_hour"] / base, 3),
            "s3_in_out_vs_local": round(s3_both["videos_per_hour"] / base, 3), "video_bytes": sum(sizes.values()),
            "fetched_bytes": copied, "fetched_vs_video_bytes": round(copied / sum(sizes.values()), 3),
            "server_requests": by_status(under(seen[1], "videos/")),
            "output_cost": output_cost(outs[2], seen[2], s3_both["videos"], sizes)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- fetch


def bench_fetch(paths: list[Path], work: Path) -> list[dict]:
    from pipeline.video.config_video import FetchConfig
    from pipeline.video.fetch import fetch
    from shards.remote import RangedFile

    bucket = Storage(f"s3://{BUCKET}/long")
    for p in paths:
        bucket.put(p.name, p.read_bytes())
    rows = []
    for path in paths:
        url, size = f"s3://{BUCKET}/long/{path.name}", path.stat().st_size
        sets, keyframe_s = sampling_times(path)
        get_ms = request_ms(bucket, path.name, size)
        for name in ("default sets", "shard"):
            times = sets[name]
            dest = work / f"copy_{path.name}"
            start = time.perf_counter()
            fetched = fetch(url, dest, FetchConfig())
            copied = time.perf_counter() - start
            got = decode_at(str(dest), times, keyframe_s)
            full_s = time.perf_counter() - start
            dest.unlink()
            start = time.perf_counter()
            ranged = RangedFile(url)
            got_ranged = decode_at(ranged, times, keyframe_s)
            ranged_s = time.perf_counter() - start
            common = {"video": path.name, "file_mb": round(size / 2**20, 1), "sampling": name, "frames": len(times),
                      "keyframe_s": round(keyframe_s, 2), "server_ms_per_get": get_ms}  # fmt: skip
            rows.append({**common, "strategy": "full copy", "requests": 2, "bytes": fetched.bytes,
                         "bytes_vs_file": round(fetched.bytes / size, 3), "wall_s": round(full_s, 2),
                         "fetch_s": round(copied, 2), "frames_found": got})  # fmt: skip
            rows.append({**common, "strategy": "ranged", "requests": ranged.requests, "bytes": ranged.bytes_fetched,
                         "bytes_vs_file": round(ranged.bytes_fetched / size, 3), "wall_s": round(ranged_s, 2),
                         "fetch_s": None, "frames_found": got_ranged})  # fmt: skip
            log.info("%s %s: %s", path.name, name, rows[-2:])
    return rows


# ---------------------------------------------------------------------------------------------------- train


def train_rate(shards: str, steps: int, order: str) -> dict:
    from bench.train import train_sets
    from pipeline.core.config_load import load_config
    from train.config import TrainConfig
    from train.trainer import train

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp, counted_storage() as counts:
        sets = train_sets(shards, Path(tmp), steps, 32) + ["data.num_workers=0", f"data.order={order}"]
        start = time.perf_counter()
        history = train(load_config(root / "configs/train/tiny_debug.yaml", sets, model=TrainConfig))["history"]
        wall = time.perf_counter() - start
    timed, items = history[WARMUP:], sum(len(h["items"]) for h in history)
    return {"order": order, "input": "s3" if shards.startswith("s3://") else "local", "wall_s": round(wall, 2),
            "samples_per_s": round(sum(len(h["items"]) for h in timed) / sum(h["step_s"] for h in timed), 3),
            "data_wait_s": round(statistics.mean(h["data_wait_s"] for h in timed), 4), "samples": items,
            "requests_per_sample": round(counts["requests"] / items, 2), **counts}  # fmt: skip


def bench_train(shards: Path, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)  # a 20 ms step on two threads swings tenfold when anything else wants a core
    upload_tree(shards, f"s3://{BUCKET}/run")
    tars = sorted((shards / "shards").glob("*.tar"))
    train_rate(str(shards), WARMUP + 1, "shard_shuffle")  # untimed: the process's first training pays one-off costs
    runs, ratios, drift = [], {}, {}
    for order in ("shard_shuffle", "permutation"):  # local, s3, local: the mean of the two local runs is the base
        trio = [train_rate(where, steps, order) for where in (str(shards), f"s3://{BUCKET}/run", str(shards))]
        base = (trio[0]["samples_per_s"] + trio[2]["samples_per_s"]) / 2
        ratios[order] = round(trio[1]["samples_per_s"] / base, 3)
        drift[order] = round(trio[2]["samples_per_s"] / trio[0]["samples_per_s"], 3)
        runs += trio
    return {"runs": runs, "s3_vs_local": ratios, "local_drift": drift, "shards": len(tars),
            "shard_bytes": sum(p.stat().st_size for p in tars)}  # fmt: skip


# ----------------------------------------------------------------------------------------------------- main


def fetch_row(r: dict) -> list[str]:
    return [r["video"], f"{r['file_mb']:.1f}", r["sampling"], str(r["frames"]), r["strategy"], str(r["requests"]),
            f"{r['bytes_vs_file']:.3f}", f"{r['wall_s']:.2f}", f"{r['server_ms_per_get']:.1f}"]


def train_row(r: dict) -> list[str]:
    counted = [str(r["requests"]), f"{r['requests_per_sample']:.2f}", f"{r['bytes'] / 2**20:.2f}"]
    return [f"{r['order']} {r['input']}", f"{r['samples_per_s']:.2f}", f"{r['data_wait_s']:.4f}", f"{r['wall_s']:.1f}",
            str(r["samples"]), *(counted if r["input"] == "s3" else ["-"] * 3)]


def cost_rows(o: dict) -> list[list[str]]:
    """Requests by kind (output prefix: total, per committed shard, per video, and those on the shards' own tars and
    records per shard; input: total, per video), then MB."""
    shards, videos = o["shards"], o["videos"]
    out, own, inp = o["requests"], o["shard_object_requests"], o["input_requests"]
    counts = [(kind, out.get(kind, 0), own.get(kind, 0), inp.get(kind, 0)) for kind in {**out, **inp}]
    counts.append(("all", sum(out.values()), sum(own.values()), sum(inp.values())))
    rows = [[kind, str(n), f"{n / shards:.1f}", f"{n / videos:.1f}", f"{k / shards:.1f}", str(m), f"{m / videos:.1f}"]
            for kind, n, k, m in counts]  # fmt: skip
    stored, fetched = (o["shard_bytes"] + o["other_bytes"]) / 2**20, o["fetched_bytes"] / 2**20
    tars = o["shard_bytes"] / 2**20
    return rows + [["MB", f"{stored:.1f}", f"{stored / shards:.2f}", f"{stored / videos:.2f}", f"{tars / shards:.2f}",
                    f"{fetched:.1f}", f"{fetched / videos:.2f}"]]  # fmt: skip


def report(out: dict) -> None:
    p, f, t, c = out["pipeline"], out["fetch"], out["train"], out["config"]
    o = p["output_cost"]
    print(f"pipeline: {c['videos']} x {c['video_s']}s 640x360 30fps H.264, {c['cpus']} cores, llm off; output on local "
          f"disk but in the s3 / s3 run ({o['url']}); local drift (2nd/1st) {p['local_drift']:.2f}")
    rows = [[f"{r['input']} / {r['output']}" + (" (warm-up)" if r.get("warm_up") else ""), str(r["videos"]),
             f"{r['wall_s']:.1f}", f"{r['window_s']:.1f}", f"{r['videos_per_hour']:.0f}",
             "  ".join(f"{k} {v:.1f}" for k, v in r["stage_s"].items() if v >= 0.05)] for r in p["runs"]]  # fmt: skip
    print(table(["input / output", "videos", "wall s", "window s", "videos/hour", "worker s by stage"], rows))
    print(f"s3 / s3 vs mean local {p['s3_in_out_vs_local']:.3f}, s3 / local vs mean local {p['s3_in_vs_local']:.3f}; "
          f"the s3 / local run's fetch copied {p['fetched_bytes'] / 2**20:.1f} MB of {p['video_bytes'] / 2**20:.1f} MB "
          f"of video ({p['fetched_vs_video_bytes']:.2f}); server saw {p['server_requests']}\n")
    print(f"the s3 / s3 run's requests: {o['videos']} videos, {o['shards']} committed shards "
          f"({o['shard_bytes'] / 2**20:.1f} MB), {o['other_bytes'] / 2**20:.2f} MB in the prefix's other objects; MB: "
          "stored under the output prefix, fetched from the input (whole-object GETs)")
    print(table(["kind", "output", "per shard", "per video", "tar+record / shard", "input", "per video"],
                cost_rows(o)))
    print("output statuses: " + ", ".join(f"{k} {v}" for k, v in o["statuses"].items()) + "\n")
    print(f"frames of the default sampling (320x180 30fps H.264, keyframes every {f[0]['keyframe_s']:.1f} s), "
          "full copy vs ranged reads")
    print(table(["video", "file MB", "sampling", "frames", "strategy", "requests", "bytes / file", "wall s",
                 "server ms/GET"], [fetch_row(r) for r in f]))  # fmt: skip
    print(f"\ntraining, tiny model, 1 thread, 32 frames, batch 1, {c['steps']} steps ({WARMUP} warmup), no loader "
          f"workers; {t['shards']} shards, {t['shard_bytes'] / 2**20:.1f} MB; local drift (2nd/1st) "
          + ", ".join(f"{k} {v:.2f}" for k, v in t["local_drift"].items()))
    print(table(["order / input", "samples/s", "data wait s", "wall s", "samples", "requests", "requests/sample",
                 "MB fetched"], [train_row(r) for r in t["runs"]]))  # fmt: skip
    print()
    print(targets_table(out["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 x 1-minute videos, a 10-minute long video, 8 steps")
    parser.add_argument("--videos", type=int, help="pipeline videos (default 4 with --quick, else 12)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cpus = len(os.sched_getaffinity(0))
    n, seconds, long_s, steps = (4, 60, 600, 8) if args.quick else (12, 300, 3600, 30)
    n = args.videos or n
    spec = SynthVideo(name=f"bench_{seconds // 60}min_640x360", duration_s=seconds, width=640, height=360, fps=30,
                      codec="h264", audio=False, keyint=None)  # bench/pipeline.py's video, shared through the cache
    source = make_video(spec, args.workdir)
    short_long = [make_video(SynthVideo(f"remote_{s // 60}min_320x180", duration_s=s, width=320, height=180, fps=30,
                                        codec="h264", audio=False), args.workdir, timeout_s=1800)
                  for s in (60, long_s)]  # fmt: skip
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="remote-"))
    try:
        videos = work / "videos"
        videos.mkdir()
        for i in range(n):
            shutil.copy(source, videos / f"video_{i:03d}.mp4")
        with s3_server(work) as endpoint:
            make_bucket(endpoint, BUCKET)
            os.environ.update(s3_env(endpoint))  # before Ray starts: its workers inherit them
            import ray

            from bench.train import make_shards

            try:  # the first run starts embedded Ray (ray.num_cpus = cores); the later runs use it
                pipeline = bench_pipeline(videos, work / "s3server.log", work, cpus)
                shards = make_shards(args.workdir / "train", 4)  # bench/train.py's run, shared through the cache
            finally:
                ray.shutdown()
            fetched = bench_fetch(short_long, work)
            trained = bench_train(shards, steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = [target("pipeline videos/hour s3 in+out / local", pipeline["s3_in_out_vs_local"], ">=", 0.9),
               target("pipeline videos/hour s3 in / local", pipeline["s3_in_vs_local"], ">=", 0.9)]
    targets += [target(f"train samples/s s3 / local ({order})", v, ">=", 0.9)
                for order, v in trained["s3_vs_local"].items()]  # fmt: skip
    out = {"machine": machine(("ray", "av", "obstore", "moto", "torch")),
           "config": {"videos": n, "video_s": seconds, "long_video_s": long_s, "steps": steps, "cpus": cpus},
           "pipeline": pipeline, "fetch": fetched, "train": trained, "targets": targets}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
