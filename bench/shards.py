"""Shard-writing benchmark: our writer (webdataset TarWriter, hashed on the fly, .partial + fsync + rename)
against a raw sequential write of the same bytes, in the same run.

Samples look like the pipeline's (format 2, `pipeline/core/sample.py`): 192 JPEG-sized
frames (random bytes between JPEG markers, so nothing compresses) back to back in
one `frames.mjpeg` member, plus the metadata model and conversations. Both writers split the
stream into the same shards and fsync each one, so the ratio is the cost of the
tar framing, hashing and atomic rename. webdataset's own ShardWriter (no hash,
no temporary name) is shown for reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds

from bench.common import machine, table, target, targets_table  # noqa: E402
from shards.layout import sample_from_sections  # noqa: E402
from shards.tarwriter import ShardFile  # noqa: E402

FRAMES = 192


def make_samples(n: int, frame_kb: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        frames = [b"\xff\xd8" + rng.bytes(frame_kb * 1024 + int(rng.integers(-2048, 2048))) + b"\xff\xd9" for _ in range(FRAMES)]
        samples.append(sample_from_sections(f"video-{i:06d}", frames, {"video": {"duration_s": 180.0}}, []))
    return samples


def payload(sample: dict) -> list[bytes]:
    return [v for k, v in sorted(sample.items()) if k != "__key__"]


def write_ours(samples: list[dict], out: Path, per_shard: int) -> None:
    for start in range(0, len(samples), per_shard):
        shard = ShardFile(out, f"ours-{start:06d}.tar", fsync=True)
        for s in samples[start : start + per_shard]:
            shard.write(s)
        shard.close()


def write_raw(samples: list[dict], out: Path, per_shard: int) -> None:
    for start in range(0, len(samples), per_shard):
        with open(out / f"raw-{start:06d}.bin", "wb") as f:
            for s in samples[start : start + per_shard]:
                for part in payload(s):
                    f.write(part)
            f.flush()
            os.fsync(f.fileno())


def write_wds(samples: list[dict], out: Path, per_shard: int) -> None:
    with wds.ShardWriter(str(out / "wds-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for s in samples:
            sink.write(s)


METHODS = {"raw sequential write": write_raw, "ours (hash + partial + rename)": write_ours, "webdataset ShardWriter": write_wds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, one repeat")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".cache")
    args = parser.parse_args(argv)
    n, repeats, per_shard = (24, 1, 8) if args.quick else (96, 5, 32)
    samples = make_samples(n, frame_kb=25)
    total = sum(len(p) for s in samples for p in payload(s))
    args.workdir.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(repeats):
        for name, fn in METHODS.items():  # interleaved, so machine noise hits all alike
            out = Path(tempfile.mkdtemp(dir=args.workdir, prefix="shards-"))
            start = time.perf_counter()
            fn(samples, out, per_shard)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(out)
    med = {m: statistics.median(t) for m, t in times.items()}
    mbs = {m: total / 2**20 / s for m, s in med.items()}
    base = mbs["raw sequential write"]
    results = [{"method": m, "seconds": round(med[m], 4), "mb_per_s": round(mbs[m], 1), "vs_raw": round(mbs[m] / base, 3)}
               for m in METHODS]
    report = {
        "machine": machine(),
        "config": {"samples": n, "frames_per_sample": FRAMES, "payload_mb": round(total / 2**20, 1),
                   "samples_per_shard": per_shard, "repeats": repeats},
        "results": results,
        "targets": [target("shards/ours_vs_raw_write_mb_s", mbs["ours (hash + partial + rename)"] / base, ">=", 0.7)],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{n} samples x {FRAMES} frames, {total / 2**20:.0f} MiB, {per_shard} samples a shard, median of {repeats}\n")
        print(table(["writer", "seconds", "MiB/s", "vs raw"],
                    [[r["method"], f"{r['seconds']:.2f}", f"{r['mb_per_s']:.0f}", f"{r['vs_raw']:.2f}"] for r in results]))
        print()
        print(targets_table(report["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
