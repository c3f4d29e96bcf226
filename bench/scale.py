"""Scale benchmark: what a million sources and a million ledger rows cost the driver, measured in the same run.

  dispatch    `run_pipeline` on a JSONL manifest of N rows (tiny placeholder sources: paths of files that do
              not exist), in a fresh subprocess per N, with the Ray graph replaced by a stand-in that turns each
              task into the row Ray Data is given (`VideoTask.to_row`) and drops it: what the driver itself does
              before and while it dispatches (read the manifest, check keys, resume set, feed the graph), not
              decode. Reported: time from the call to the first task handed to the graph, and the process's peak
              RSS (and its growth over the interpreter with everything imported).
  resume      the bookkeeping a rerun does before it dispatches anything (`pipeline.resume.resume_state`: clean,
              damaged shards, the done set; then every source checked against it) for a run directory whose
              ledger holds M rows (synthesised shard records, sparse tars of the recorded size, reject parts),
              and the tables rebuilt at the end of the run (`ledger.write_tables`).
  stats       `prolongvid stats` (`shards.stats.compute_stats`) on that run's M-row index.

Targets: first dispatch at the largest N / at the smallest <= 2 (it does not grow with N); peak RSS growth
from the middle N to the largest <= 300 MB; resume bookkeeping and stats at M rows <= 10 s each.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its pipeline.py / shards.py would shadow the
# packages of the same names: the repository root goes first instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import tempfile
import time

from bench.common import machine, table, target, targets_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_SHARD = 1000


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_manifest(path: Path, n: int) -> None:
    with path.open("w") as f:
        for start in range(0, n, 10_000):
            f.write("".join(f'{{"path": "v/{i % 1000:03d}/clip_{i:07d}.mp4", "lang": "en"}}\n'
                            for i in range(start, min(n, start + 10_000))))


def child_dispatch(manifest: Path, out: Path) -> dict:
    """In a fresh process: run the pipeline over the manifest with the graph replaced by a stand-in."""
    import pipeline.graph
    import pipeline.run
    from pipeline.run_config import load_run_config

    cfg = load_run_config(ROOT / "configs" / "demo.yaml", [f"input.path={manifest}", f"output.dir={out}",
                                                       "input.format=auto", "llm.enabled=false", "ray.progress=false"])
    seen = {"first": None, "tasks": 0, "waves": 0}
    base = rss_mb()
    start = time.perf_counter()

    def stand_in(plan, tasks, run_stamp, generation):
        seen["waves"] += 1
        for task in tasks:
            if seen["first"] is None:
                seen["first"] = time.perf_counter() - start
            task.to_row([])
            seen["tasks"] += 1
        return []

    pipeline.graph.run_graph = stand_in
    pipeline.run.init_ray = lambda cfg: None
    summary = pipeline.run.run_pipeline(cfg)
    return {"first_dispatch_s": round(seen["first"] or 0.0, 4), "total_s": round(time.perf_counter() - start, 3),
            "dispatched": seen["tasks"], "waves": seen["waves"], "sources": summary.sources,
            "peak_rss_mb": round(rss_mb(), 1), "rss_growth_mb": round(rss_mb() - base, 1)}


def measure_dispatch(n: int, work: Path) -> dict:
    manifest = work / f"manifest_{n}.jsonl"
    write_manifest(manifest, n)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", str(manifest), str(work / f"out_{n}")],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dispatch child for {n} rows failed:\n{proc.stderr[-3000:]}")
    manifest.unlink()
    return {"rows": n, **json.loads(proc.stdout.strip().splitlines()[-1])}


def synth_run(root: Path, rows: int) -> None:
    """A finished run directory whose ledger holds `rows` index rows, in the real format (shards/ledger.py)."""
    from shards import ledger
    from shards.layout import RunDir

    run = RunDir(root)
    run.make()
    for s in range(0, rows, ROWS_PER_SHARD):
        name = f"shard-{s // ROWS_PER_SHARD:06d}.tar"
        index = [{"key": f"clip_{i:07d}-{i * 2654435761 % 16**8:08x}", "shard": name,
                  "source": f"/data/videos/v/{i % 1000:03d}/clip_{i:07d}.mp4", "duration_s": 30.0 + i % 600,
                  "fps": 30.0, "width": 640, "height": 360, "codec": "h264", "frames_stored": 192,
                  "frames_needed": 192, "decoder": "pyav", "sample_bytes": 4_000_000, "num_conversations": 0,
                  "tokens_stage1": 4992, "tokens_stage3": 29952} for i in range(s, min(rows, s + ROWS_PER_SHARD))]
        size = 4_000_000 * len(index)
        with open(run.shards / name, "wb") as f:
            f.truncate(size)  # sparse: only its size is checked
        record = {"name": name, "sha256": "0" * 64, "bytes": size, "samples": len(index), "rows": index, "generation": 1}
        (run.ledger_shards / (name + ".json")).write_text(json.dumps(record))
    rejects = [{"key": f"bad_{i:07d}", "source": f"/data/videos/bad/{i:07d}.mp4", "stage": "probe",
                "reason": "unreadable", "detail": "moov atom not found"} for i in range(rows // 100)]
    for p in range(0, len(rejects), 1000):
        ledger.write_rejects_part(run, rejects[p:p + 1000])


def measure_ledger(rows: int, work: Path) -> dict:
    from pipeline.resume import resume_state
    from pipeline.core.task import VideoTask
    from shards import ledger
    from shards.layout import RunDir
    from shards.stats import compute_stats

    root = work / f"run_{rows}"
    start = time.perf_counter()
    synth_run(root, rows)
    made = time.perf_counter() - start
    run = RunDir(root)
    start = time.perf_counter()
    ledger.write_tables(run)
    tables = time.perf_counter() - start
    # the sources of a rerun: every video of the run (half of them done), checked against the done set
    tasks = [VideoTask(f"clip_{i:07d}-{i * 2654435761 % 16**8:08x}", f"/data/videos/v/{i % 1000:03d}/clip_{i:07d}.mp4",
                       {}) for i in range(0, 2 * rows, 2)]
    start = time.perf_counter()
    state = resume_state(run, (), repair=False)
    todo = state.todo(tasks)
    resume = time.perf_counter() - start
    start = time.perf_counter()
    stats = compute_stats(run)
    stats_s = time.perf_counter() - start
    assert stats["samples"] == rows, stats["samples"]
    shutil.rmtree(root, ignore_errors=True)
    return {"ledger_rows": rows, "synth_s": round(made, 2), "resume_s": round(resume, 3), "to_do": len(todo),
            "tables_s": round(tables, 3), "stats_s": round(stats_s, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10K / 20K / 40K sources (the smallest is one chunk), a 20K-row ledger")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.child:
        print(json.dumps(child_dispatch(Path(args.child[0]), Path(args.child[1]))))
        return 0
    sizes = [10_000, 20_000, 40_000] if args.quick else [10_000, 100_000, 1_000_000]
    ledger_rows = 20_000 if args.quick else 1_000_000
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=args.workdir))
    try:
        dispatch = []
        for n in sizes:
            dispatch.append(measure_dispatch(n, work))
            logging.getLogger("bench.scale").warning("dispatch %s", dispatch[-1])
        resume = measure_ledger(ledger_rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, middle, large = dispatch
    targets = [target("dispatch/first_dispatch_largest_over_smallest", large["first_dispatch_s"] /
                      max(small["first_dispatch_s"], 1e-3), "<=", 2.0),
               target("dispatch/peak_rss_growth_middle_to_largest_mb", large["peak_rss_mb"] - middle["peak_rss_mb"], "<=", 300),
               target("resume/bookkeeping_s", resume["resume_s"], "<=", 10.0),
               target("stats/compute_s", resume["stats_s"], "<=", 10.0)]
    report = {"machine": machine(("ray", "pyarrow", "ijson")), "config": {"sources": sizes, "ledger_rows": ledger_rows},
              "dispatch": dispatch, "ledger": resume, "targets": targets}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = [[f"{d['rows']:,}", f"{d['first_dispatch_s']:.3f}", f"{d['total_s']:.1f}", f"{d['peak_rss_mb']:.0f}",
             f"{d['rss_growth_mb']:.0f}", str(d["waves"])] for d in dispatch]
    print(table(["sources", "first dispatch s", "all dispatched s", "peak RSS MB", "RSS growth MB", "graph waves"], rows))
    print()
    print(table(["ledger rows", "resume s", "tables s", "stats s"],
                [[f"{resume['ledger_rows']:,}", f"{resume['resume_s']:.2f}", f"{resume['tables_s']:.2f}",
                  f"{resume['stats_s']:.2f}"]]))
    print()
    print(targets_table(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
