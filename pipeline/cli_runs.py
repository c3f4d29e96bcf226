"""The commands that read (or, for `dedup`, rewrite) a finished run folder: `stats`, `view`, `audit`, `dedup`,
`export-llava`. Each also works on a run on an object store (`s3://bucket/run1`): the readers through
`shards.access.reading_run`, `dedup` through `shards.remote_dedup`, as on the same run on disk."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pipeline.core.storage import is_remote
from pipeline.run_config import load_run_config
from shards.layout import CONFIG_FILE
from shards.reader import NotARunDir
from shards.viewer import cmd_view


def cmd_stats(args: argparse.Namespace) -> int:
    from shards.access import reading_run
    from shards.stats import compute_stats, stats_table
    from shards.verify import verify_run

    with reading_run(args.run_dir) as (run, tars):  # a URL run: the tables copied here, the shards read in place
        stats = compute_stats(run)
        problems: list[str] = verify_run(run, tars) if args.verify else []
        viewer = run.root / "viewer" / "index.html"  # `prolongvid view`'s default site (a local run's)
        viewer_there = viewer.exists()
    text = stats_table(stats)
    if args.verify:
        stats["verify"] = {"ok": not problems, "problems": problems}
    print(json.dumps(stats, indent=1) if args.json else text)
    if args.plots:
        from shards.plots import write_html, write_plots

        charts = write_plots(stats, args.plots)
        report = write_html(stats, text, charts, Path(args.plots) / "report.html", viewer if viewer_there else None)
        print(f"charts and {report} written", file=sys.stderr)
    if args.verify:
        for p in problems:
            print(f"verify: {p}", file=sys.stderr)
        print(f"verify: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pipeline.audit import audit_report, run_audit
    from pipeline.core.tables import table

    results = run_audit(args.run_dir, samples=args.samples, seed=args.seed, max_frames=args.frames, keys=args.key)
    report = audit_report(results, args.min_psnr)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        rows = []
        for s in report["samples"]:
            worst = "-" if s["worst_psnr_db"] is None else f"{s['worst_psnr_db']:.1f} dB"
            bad = ", ".join(f"#{m['position']} (index {m['index']}, {m['time_s']:.2f}s): "
                            + ("no frame" if m["psnr_db"] is None else f"{m['psnr_db']:.1f} dB") for m in s["mismatches"][:4])
            rows.append([s["key"], s["frames_checked"], worst, s["error"] or bad or "ok"])
        print(table(["sample", "frames", "worst PSNR", f"frames below {args.min_psnr:g} dB"], rows))
    mismatched, unaudited = report["mismatched_frames"], report["unaudited_samples"]
    print(f"audit: {len(results)} samples, {mismatched} mismatched frame(s), {unaudited} not auditable", file=sys.stderr)
    return 1 if mismatched or unaudited else 0


def _dedup_config(args: argparse.Namespace, tmp: Path) -> Any:
    """--config, else the run's own config.resolved.yaml (fetched from a bucket run), with --set on top."""
    config = args.config
    if config is None and is_remote(args.run_dir):
        from pipeline.core.storage import NotFound, Storage

        try:
            (tmp / CONFIG_FILE).write_bytes(Storage(args.run_dir).get(CONFIG_FILE))
            config = str(tmp / CONFIG_FILE)
        except NotFound:
            pass
    elif config is None and (Path(args.run_dir) / CONFIG_FILE).exists():
        config = str(Path(args.run_dir) / CONFIG_FILE)
    return load_run_config(config, [f"input.path={args.run_dir}", f"output.dir={args.run_dir}", *(args.set or [])])


def _dedup_local(run_dir: str, cfg: Any, dry_run: bool) -> Any:
    from pipeline.run import run_lock
    from shards.dedup_apply import dedup_run
    from shards.layout import RunDir
    from shards.runfolder import RefusedFolder, check_layout, is_marked

    if not Path(run_dir).is_dir():
        raise NotARunDir(f"{run_dir} is not a run's output directory")
    if not is_marked(RunDir(run_dir)):
        raise RefusedFolder(f"{run_dir} is not a run folder (no .ledger/run.marker.json): dedup rewrites "
                            "only shards a run made")
    check_layout(RunDir(run_dir), "run folder")
    # Rewriting shards while a run writes into the folder would race it: the run's lock is taken first.
    with nullcontext() if dry_run else run_lock(RunDir(run_dir)):
        return dedup_run(run_dir, cfg, dry_run=dry_run)


def _dedup_remote(url: str, cfg: Any, dry_run: bool) -> Any:
    from pipeline.run import RunLocked
    from shards import remote_lease
    from shards.remote_dedup import dedup_remote

    try:  # the run's lease, as a run takes it: refused while a run writes there
        return dedup_remote(url, cfg, dry_run=dry_run)
    except (remote_lease.RunInProgress, remote_lease.LeaseLost) as e:
        raise RunLocked(str(e)) from None


def cmd_dedup(args: argparse.Namespace) -> int:
    from pipeline.core.tables import table

    with tempfile.TemporaryDirectory(prefix="prolongvid-dedup-") as tmp:
        cfg = _dedup_config(args, Path(tmp))
    try:
        dedup = _dedup_remote if is_remote(args.run_dir) else _dedup_local
        report = dedup(args.run_dir, cfg.filters.dedup, args.dry_run)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [[d.removed, d.kept, f"{d.cosine:.4f}"] for d in report.removed[:50]]
    if rows:
        print(table(["removed", "kept", "cosine"], rows))
    verb = "would remove" if args.dry_run else "removed"
    print(f"{report.videos} videos, {verb} {len(report.removed)} near-duplicates "
          f"(threshold {cfg.filters.dedup.threshold:g}); {report.shards_rewritten} shards rewritten")
    return 0


def cmd_export_llava(args: argparse.Namespace) -> int:
    from pipeline.core.sample import NewerFormat
    from shards.llava import export_llava, summary_path

    try:
        summary = export_llava(args.run_dir, args.out_json, frames_dir=args.frames_dir, split=args.split,
                               absolute=args.absolute, check_decord=not args.no_decord_check)  # fmt: skip
    except NewerFormat as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise  # main's disk-full message
        print(f"error: cannot write the export: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    print(f"summary -> {summary_path(args.out_json)}")
    return 0


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    """The subcommands of this module, on the main parser."""
    p = sub.add_parser("stats", help="statistics of a run's shards; --verify re-reads and checks every shard")
    p.add_argument("run_dir", help="a run's output directory (holds shards/ and index.parquet)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plots", metavar="DIR", help="write PNG charts and report.html (one file) into DIR")
    p.add_argument("--verify", action="store_true", help="check sha256, samples and index; exit 1 on any problem")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("view", help="write a static site to look at a run's samples and rejects (opens from disk)")
    p.add_argument("run_dir", help="a run's output directory (holds shards/ and index.parquet)")
    p.add_argument("--out", help="site folder (default RUN_DIR/viewer): new, empty, or an earlier view's, whose files only are replaced")
    p.add_argument("--sample", type=int, default=200, help="videos given a page, stratified by duration and reject reason")
    p.add_argument("--filter", metavar="EXPR", help="keep rows matching e.g. 'duration_s>60, qa_temporal>0' or 'reason=truncated'")
    p.add_argument("--seed", type=int, default=0, help="which samples the stratified pick takes")
    p.set_defaults(func=cmd_view)  # shards/viewer.py

    p = sub.add_parser("audit", help="re-decode stored frames from the sources with ffmpeg; exit 1 on a mismatch")
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=4, help="random samples to audit (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", action="append", help="audit this sample (repeatable) instead of random ones")
    p.add_argument("--frames", type=int, default=0, help="frames checked per sample, evenly spread (0: all)")
    p.add_argument("--min-psnr", type=float, default=30.0, help="a stored frame below this against ffmpeg's is wrong")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("dedup", help="remove near-duplicate videos from a run (CLIP embeddings, corpus-wide)")
    p.add_argument("run_dir")
    p.add_argument("--config", help="config for filters.dedup (default: the run's config.resolved.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. filters.dedup.threshold=0.97")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, change nothing")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("export-llava", help="write LLaVA records of a run for the paper's trainer (LLaVA-NeXT), "
                       "and OUT.summary.json: the video root to give it as --video_folder, sources it cannot read")
    p.add_argument("run_dir", help="a run's output directory (holds shards/ and index.parquet)")
    p.add_argument("out_json", help="the annotations file to write (the summary goes beside it)")
    p.add_argument("--frames-dir", metavar="DIR", help="write each sample's stored frames (a union sample's largest "
                   "stage) to DIR/shareVideoGPTV/<key>/ and point `video` there: the trainer reads a path holding "
                   "'shareVideoGPTV' as a folder of frames (at an assumed 2 fps), with no video decoder")
    p.add_argument("--split", choices=["train", "eval", "all"], default="train",
                   help="which samples (default train: the held-out eval videos stay out of training data)")
    p.add_argument("--absolute", action="store_true", help="write absolute `video` paths instead of paths relative "
                   "to the video root (the trainer's --video_folder must still be set, to any folder)")
    p.add_argument("--no-decord-check", action="store_true", help="do not open every source with decord (the "
                   "trainer's reader) to list those it cannot read; missing files are still listed")
    p.set_defaults(func=cmd_export_llava)
