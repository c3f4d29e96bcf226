"""Remote storage benchmark: the same work with its data on an S3 API server (moto, loopback) and on local disk,
measured in the same run. The server shares this host's cores with the work, so its own CPU cost is counted.

  pipeline  `run_pipeline` (llm off) on N copies of a video, input a local folder, then `s3://bench/videos/`
            (no `input.allowed_roots`), then the local folder again: the mean of the two local runs is the
            baseline (this host's speed drifts; the drift is printed). An untimed local run goes first: the
            first run pays for starting Ray's workers. Output: local disk both times (a run folder on object
            storage is not built yet). The fetch stage's bytes come from the server's access log: each
            whole-object GET of a video counts its size (the log gives no byte counts).
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
Targets: s3 / local >= 0.9 for pipeline videos/hour and for each order's training samples/s.
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
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import machine, table, target, targets_table  # noqa: E402
from fixtures.s3server import make_bucket, s3_env, s3_server, upload_tree  # noqa: E402
from fixtures.videos import SynthVideo, make_video  # noqa: E402
from pipeline.core.storage import Storage  # noqa: E402
from pipeline.run_config import load_run_config  # noqa: E402

log = logging.getLogger("bench.remote")
BUCKET = "bench"
WARMUP = 3  # training steps left out of the rates: allocators, threads and the first opens


# ------------------------------------------------------------------------------------------ counting requests


def server_gets(log_file: Path, since: int, prefix: str) -> dict[str, list[str]]:
    """Objects under `/bucket/prefix` the server's access log shows since byte `since`, by method and status."""
    found: dict[str, list[str]] = {}
    with open(log_file, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    for method, path, status in re.findall(r'"(\w+) (/[^ ?"]*)[^"]*" (\d{3})', re.sub(r"\x1b\[[0-9;]*m", "", text)):
        if path.startswith(f"/{BUCKET}/{prefix}"):
            found.setdefault(f"{method} {status}", []).append(path.rpartition("/")[2])
    return found


@contextmanager
def counted_storage() -> Iterator[dict[str, int]]:
    """Requests and bytes of every storage call this process makes meanwhile (a listing page is one request)."""
    counts = {"requests": 0, "bytes": 0}
    saved = {name: getattr(Storage, name) for name in ("get", "get_range", "head", "stream", "list_pages")}

    def whole(fn):
        def call(self, *args, **kwargs):
            out = fn(self, *args, **kwargs)
            counts["requests"] += 1
            counts["bytes"] += len(out) if isinstance(out, bytes) else 0
            return out
        return call

    def streamed(self, *args, **kwargs):
        counts["requests"] += 1
        for chunk in saved["stream"](self, *args, **kwargs):
            counts["bytes"] += len(chunk)
            yield chunk

    def paged(self, *args, **kwargs):
        for page in saved["list_pages"](self, *args, **kwargs):
            counts["requests"] += 1
            yield page

    for name in ("get", "get_range", "head"):
        setattr(Storage, name, whole(saved[name]))
    Storage.stream, Storage.list_pages = streamed, paged
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(Storage, name, fn)


# ------------------------------------------------------------------------------------------------- pipeline


def pipeline_run(source: str, out: Path, cpus: int) -> dict:
    cfg = load_run_config(None, [f"input.path={source}", f"output.dir={out}", "llm.enabled=false", "ray.progress=false",
                                 f"ray.num_cpus={cpus}", "shards.max_samples=8"])  # fmt: skip
    from pipeline.run import run_pipeline

    summary = run_pipeline(cfg, force=True)
    this = json.loads((out / "run.json").read_text())["this_run"]
    return {"input": "s3" if source.startswith("s3://") else "local", "videos": summary.accepted,
            "rejected": summary.rejected, "wall_s": round(summary.wall_s, 2), "window_s": this["window_s"],
            "videos_per_hour": round(summary.videos_per_hour, 1),
            "stage_s": {k: v["seconds"] for k, v in this["stages"].items()}}  # fmt: skip


def bench_pipeline(videos: Path, log_file: Path, work: Path, cpus: int) -> dict:
    sizes = {p.name: p.stat().st_size for p in videos.iterdir()}
    upload_tree(videos, f"s3://{BUCKET}/videos")
    warm = {**pipeline_run(str(videos), work / "out_warm", cpus), "input": "local (warm-up)"}  # Ray's workers start
    local1 = pipeline_run(str(videos), work / "out_local1", cpus)
    since = log_file.stat().st_size
    remote = pipeline_run(f"s3://{BUCKET}/videos/", work / "out_s3", cpus)
    seen = server_gets(log_file, since, "videos/")
    local2 = pipeline_run(str(videos), work / "out_local2", cpus)
    base = (local1["videos_per_hour"] + local2["videos_per_hour"]) / 2
    copied = sum(sizes[name] for name in seen.get("GET 200", []))
    return {"runs": [warm, local1, remote, local2], "local_mean_videos_per_hour": round(base, 1),
            "local_drift": round(local2["videos_per_hour"] / local1["videos_per_hour"], 3),
            "s3_vs_local": round(remote["videos_per_hour"] / base, 3), "video_bytes": sum(sizes.values()),
            "fetched_bytes": copied, "fetched_vs_video_bytes": round(copied / sum(sizes.values()), 3),
            "server_requests": {k: len(v) for k, v in seen.items()}}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- fetch


def sampling_times(path: Path) -> tuple[dict[str, np.ndarray], float]:
    """Seconds from the first frame of every default frame set (the file is constant-rate), and the mean
    spacing of the file's first keyframes."""
    from pipeline.video.sampling import FrameIndex, plan_frame_set

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        index = FrameIndex.constant_rate(stream.frames, float(stream.average_rate))
        keys = []
        for packet in container.demux(stream):
            if packet.pts is not None and packet.is_keyframe:
                keys.append(float(packet.pts * stream.time_base))
            if len(keys) > 4:
                break
    sets = load_run_config(None, ["input.path=.", "output.dir=."]).sampling.sets
    times = {s.name: np.unique(plan_frame_set(s, index).timestamps(index)) for s in sets}
    times = {"default sets": np.unique(np.concatenate(list(times.values()))), **times}
    return times, float(np.mean(np.diff(keys))) if len(keys) > 1 else 0.0


def decode_at(source, times: np.ndarray, keyframe_s: float) -> int:
    """The first frame at or after each of `times` (sorted): a seek when the next time lies over a keyframe
    interval ahead, else decoding on. Returns the frames found."""
    got, last, frames = 0, -1.0, None
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        first = float((stream.start_time or 0) * stream.time_base)
        half = 0.5 / float(stream.average_rate)
        for ts in times:
            if frames is not None and ts <= last + half:
                got += 1
                continue
            if frames is None or ts > last + keyframe_s:
                container.seek(int((ts + first) / stream.time_base), stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                last = float(frame.time) - first
                if last >= ts - half:
                    got += 1
                    break
    return got


def request_ms(bucket: Storage, name: str, size: int, n: int = 16) -> float:
    """Median milliseconds of one 64 KiB ranged GET of this object: the server's own cost per request."""
    times = []
    for offset in np.linspace(0, size - (1 << 16), n, dtype=int):
        start = time.perf_counter()
        bucket.get_range(name, int(offset), int(offset) + (1 << 16))
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


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


def report(out: dict) -> None:
    p, f, t, c = out["pipeline"], out["fetch"], out["train"], out["config"]
    print(f"pipeline: {c['videos']} x {c['video_s']}s 640x360 30fps H.264, {c['cpus']} cores, llm off, "
          f"output: local disk; local drift (2nd/1st) {p['local_drift']:.2f}")
    rows = [[r["input"], str(r["videos"]), f"{r['wall_s']:.1f}", f"{r['window_s']:.1f}", f"{r['videos_per_hour']:.0f}",
             "  ".join(f"{k} {v:.1f}" for k, v in r["stage_s"].items() if v >= 0.05)] for r in p["runs"]]
    print(table(["input", "videos", "wall s", "window s", "videos/hour", "worker s by stage"], rows))
    print(f"s3 / mean local {p['s3_vs_local']:.3f}; fetch copied {p['fetched_bytes'] / 2**20:.1f} MB of "
          f"{p['video_bytes'] / 2**20:.1f} MB of video ({p['fetched_vs_video_bytes']:.2f}); server saw "
          f"{p['server_requests']}\n")
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
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cpus = len(os.sched_getaffinity(0))
    n, seconds, long_s, steps = (4, 60, 600, 8) if args.quick else (12, 300, 3600, 30)
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
    targets = [target("pipeline videos/hour s3 / local", pipeline["s3_vs_local"], ">=", 0.9)]
    targets += [target(f"train samples/s s3 / local ({order})", v, ">=", 0.9)
                for order, v in trained["s3_vs_local"].items()]  # fmt: skip
    out = {"machine": machine(("ray", "av", "obstore", "moto", "torch")),
           "config": {"videos": n, "video_s": seconds, "long_video_s": long_s, "steps": steps, "cpus": cpus,
                      "output": "local disk"},
           "pipeline": pipeline, "fetch": fetched, "train": trained, "targets": targets}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
