"""`prolongvid` / `python -m pipeline`: the command line.

Subcommands: `run` (videos -> shards), `stats` (what a run produced;
`--verify`), `import-llava` / `export-llava`, `probe` (what is this file, or
why it would be rejected), `sample` (one video's frame sets to JPEG files),
`demo` (generate example videos, run the pipeline on them, print the stats),
`view` (a static site of a run's samples), `plan` (a large run's cost from a pilot), `eval` (a checkpoint's
accuracy on held-out questions).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from pipeline.core.config_load import ConfigError, write_resolved_config
from pipeline.core.storage import is_remote

from pipeline.run_config import RunConfig, load_run_config
from pipeline.core.errors import VideoError
from pipeline.plan import add_plan_command
from evaluation.cli import add_eval_command
from pipeline.video.probe import ToolMissing
from dense_caption.http_backend import ServerUnavailable
from pipeline.run import RunLocked
from pipeline.run_summary import print_run_summary
from pipeline.core.sample import NewerFormat
from shards.reader import NotARunDir
from shards.viewer import cmd_view
from train.cli import cmd_train

log = logging.getLogger("prolongvid")

# What a command exits with, by the error that stopped it (the first class that matches), and the prefix of the
# one line it prints. 0: done; 1: done, with problems the command reports (a failed verify, rejects over a limit).
EXIT_CODES: list[tuple[type[Exception], int, str]] = [
    (ConfigError, 2, ""),               # a bad config, argument or input: the line names the field
    (NotARunDir, 2, "error: "),         # a folder that is not a run (or not this run's)
    (NewerFormat, 2, "error: "),        # shards written by a newer major sample format
    (ToolMissing, 3, "error: "),        # ffmpeg / ffprobe not installed
    (RunLocked, 4, "error: "),          # another live run holds the output folder
    (ServerUnavailable, 5, "error: "),  # the LLM server did not come up or went away for good
]
DISK_FULL = 6  # ENOSPC, however Ray wrapped it: the run resumes where it stopped once there is space
IMPORT_PRESET = Path(__file__).with_name("import_llava.yaml")  # import-llava's default: inside the package, never the cwd
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # the demo's, beside the packages


def _config(args: argparse.Namespace, **defaults: str) -> RunConfig:
    """Load --config (or defaults only) with --set overrides; input/output get placeholders for file-only commands."""
    sets = [f"{k}={v}" for k, v in defaults.items()] + list(args.set or [])
    return load_run_config(args.config, sets)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="run config YAML (configs/default.yaml lists every key)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. decode.backend=pyav")


def cmd_probe(args: argparse.Namespace) -> int:
    from pipeline.video.probe import preflight
    from pipeline.video.report import probe_table

    cfg = _config(args, **{"input.path": ".", "output.dir": "."}) if not args.config else _config(args)
    rows = []
    for path in args.paths:
        try:
            rows.append({"path": path, "ok": True, **preflight(path, cfg.probe, cfg.limits).to_dict()})
        except VideoError as e:
            rows.append({"path": path, "ok": False, "reason": e.reason.value, "detail": e.detail})
    print(json.dumps(rows, indent=2) if args.json else probe_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.video.extract import extract_frames
    from pipeline.video.probe import preflight
    from pipeline.video.report import write_frame_sets

    cfg = _config(args, **{"input.path": args.path, "output.dir": args.out})
    try:
        info = preflight(args.path, cfg.probe, cfg.limits)
        result = extract_frames(info, cfg.sampling, cfg.decode, num_frames_override=args.frames)
    except VideoError as e:
        print(f"rejected: {e.reason.value}: {e.detail}", file=sys.stderr)
        return 1
    out = Path(cfg.output.dir)
    write_resolved_config(cfg, out)
    write_frame_sets(result, info, out)
    print(f"{args.path}: decoder {result.decoder}, {result.frames_decoded} frames decoded in {result.decode_seconds:.2f}s")
    for name, fs in result.sets.items():
        print(f"  {name}: {len(fs)} frames {fs.width}x{fs.height} -> {out / name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:  # the demo's example videos and tiny VLM are fixtures: in a checkout, not in the installed wheel
        from pipeline.demo import run_demo
    except ModuleNotFoundError as e:
        if e.name != "fixtures":
            raise
        raise ConfigError("the demo runs from a checkout of the repository (`make demo`): its example videos and "
                          "tiny model (fixtures/) are not part of the installed package") from None

    cfg = load_run_config(args.config, [f"output.dir={args.out}", f"input.path={Path(args.out) / 'videos' / 'annotations.json'}",
                                    "input.format=llava", *(args.set or [])])
    return run_demo(cfg)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run import run_pipeline

    cfg = load_run_config(args.config, args.set or [])
    summary = run_pipeline(cfg, force=args.force, retry_reasons=args.retry_rejects or [], repair=args.repair)
    print_run_summary(summary)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from shards.reader import open_run
    from shards.stats import compute_stats, stats_table
    from shards.verify import verify_run

    with ExitStack() as stack:
        if is_remote(args.run_dir):  # the tables copied here; the shards read in place by --verify
            from shards.remote import mirror_tables, remote_tars

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prolongvid-stats-")))
            run, tars = open_run(mirror_tables(args.run_dir, tmp)), remote_tars(args.run_dir)
        else:
            run, tars = open_run(args.run_dir), None
        stats = compute_stats(run)
        problems: list[str] = verify_run(run, tars) if args.verify else []
    text = stats_table(stats)
    if args.verify:
        stats["verify"] = {"ok": not problems, "problems": problems}
    print(json.dumps(stats, indent=1) if args.json else text)
    if args.plots:
        from shards.plots import write_html, write_plots

        charts = write_plots(stats, args.plots)
        viewer = run.root / "viewer" / "index.html"  # `prolongvid view`'s default site
        report = write_html(stats, text, charts, Path(args.plots) / "report.html", viewer if viewer.exists() else None)
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


def cmd_import_llava(args: argparse.Namespace) -> int:
    from pipeline.run import run_pipeline

    sets = [f"input.path={args.annotations}", "input.format=llava", f"input.video_root={args.video_root}",
            f"output.dir={args.out_dir}", *(args.set or [])]
    config = args.config or str(IMPORT_PRESET)
    cfg = load_run_config(config, sets)
    print(f"import-llava: config {config}", file=sys.stderr)
    summary = run_pipeline(cfg, force=args.force, retry_reasons=args.retry_rejects or [])
    print_run_summary(summary)
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from pipeline.core.tables import table
    from shards.dedup_apply import dedup_run

    config = args.config or str(Path(args.run_dir) / "config.resolved.yaml")
    cfg = load_run_config(config if Path(config).exists() else None,
                      [f"input.path={args.run_dir}", f"output.dir={args.run_dir}", *(args.set or [])])
    from contextlib import nullcontext

    from pipeline.run import run_lock
    from shards.layout import RunDir

    if not Path(args.run_dir).is_dir():
        print(f"error: {args.run_dir} is not a run's output directory", file=sys.stderr)
        return 2
    from shards.runfolder import RefusedFolder, check_layout, is_marked

    if not is_marked(RunDir(args.run_dir)):
        raise RefusedFolder(f"{args.run_dir} is not a run folder (no .ledger/run.marker.json): dedup rewrites "
                            "only shards a run made")
    check_layout(RunDir(args.run_dir), "run folder")
    try:
        # Rewriting shards while a run writes into the folder would race it: the run's lock is taken first.
        with nullcontext() if args.dry_run else run_lock(RunDir(args.run_dir)):
            report = dedup_run(args.run_dir, cfg.filters.dedup, dry_run=args.dry_run)
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


def cmd_ray_stop(args: argparse.Namespace) -> int:
    from pipeline.raystop import stop_cluster

    if not Path(args.temp_dir).is_dir():
        raise NotARunDir(f"{args.temp_dir} is not a folder: give the --temp-dir the cluster was started with")
    verb = "would stop" if args.dry_run else "stopping"
    print(f"{verb} the Ray processes of {args.temp_dir}:")
    n = stop_cluster(args.temp_dir, grace_s=args.grace_s, dry_run=args.dry_run)
    print(f"{'would stop' if args.dry_run else 'stopped'} {n} Ray processes of {args.temp_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prolongvid", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline: videos -> WebDataset shards, index, rejects, run.json")
    p.add_argument("config", help="run config YAML (configs/default.yaml lists every key)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. output.dir=out/x")
    p.add_argument("--force", action="store_true", help="redo everything instead of resuming")
    p.add_argument("--retry-rejects", nargs="+", metavar="REASON", help="retry rejected videos with these reasons (patterns allowed: 'llm_*')")
    p.add_argument("--repair", action="store_true", help="check every shard's sha256 first and redo the samples of damaged ones")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stats", help="statistics of a run's shards; --verify re-reads and checks every shard")
    p.add_argument("run_dir", help="a run's output directory (holds shards/ and index.parquet)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plots", metavar="DIR", help="write PNG charts and report.html (one file) into DIR")
    p.add_argument("--verify", action="store_true", help="check sha256, samples and index; exit 1 on any problem")
    p.set_defaults(func=cmd_stats)
    add_plan_command(sub)  # pipeline/plan.py

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

    p = sub.add_parser("import-llava", help="shard an existing LLaVA-format dataset (no LLM)")
    p.add_argument("annotations", help="LLaVA JSON: a list of {id, video, conversations}")
    p.add_argument("video_root", help="folder the records' video paths are relative to")
    p.add_argument("out_dir")
    p.add_argument("--config", help="run config (default: the package's import preset, pipeline/import_llava.yaml; "
                   "nothing is read from the current folder)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--force", action="store_true")
    p.add_argument("--retry-rejects", nargs="+", metavar="REASON")
    p.set_defaults(func=cmd_import_llava)

    p = sub.add_parser("dedup", help="remove near-duplicate videos from a run (CLIP embeddings, corpus-wide)")
    p.add_argument("run_dir")
    p.add_argument("--config", help="config for filters.dedup (default: the run's config.resolved.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. filters.dedup.threshold=0.97")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, change nothing")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("train", help="train the video LLM on a run's shards (configs/train/*.yaml)")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. output.dir=out/train/x")
    p.add_argument("--dry-run", action="store_true", help="print the per-GPU memory estimate, train nothing")
    p.set_defaults(func=cmd_train)  # train/cli.py
    add_eval_command(sub)  # evaluation/cli.py

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

    p = sub.add_parser("ray-stop", help="stop the Ray processes started with one --temp-dir (not every Ray, as `ray stop` does)")
    p.add_argument("temp_dir", help="the --temp-dir given to `ray start` on this machine")
    p.add_argument("--grace-s", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--dry-run", action="store_true", help="list the processes it would stop, stop nothing")
    p.set_defaults(func=cmd_ray_stop)

    p = sub.add_parser("probe", help="probe files and say why any would be rejected")
    p.add_argument("paths", nargs="+")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_config_args(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("sample", help="decode one video once and write every configured frame set as JPEGs")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="output folder (one subfolder per frame set)")
    p.add_argument("--frames", type=int, default=None, help="per-sample frame count: overrides every set's mode")
    _add_config_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="generate example videos, probe and sample them, print what was found")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="default: the checkout's configs/demo.yaml (not the "
                   "current folder's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_demo)
    return parser


def disk_full(error: BaseException) -> OSError | str | None:
    """The ENOSPC behind an error, however Ray wrapped it (cause chains, a task error carrying only text)."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return "" if "[Errno 28]" in str(error) or "No space left on device" in str(error) else None


def exit_code(error: BaseException) -> tuple[int, str] | None:
    """The exit code and the line the CLI prints for an error that stopped a command; None: a bug (raise it)."""
    for cls, code, prefix in EXIT_CODES:
        if isinstance(error, cls):
            return code, f"{prefix}{error}"
    full = disk_full(error)
    if full is None:
        return None
    where = f" writing {full.filename}" if isinstance(full, OSError) and full.filename else ""
    return DISK_FULL, (f"error: no space left on device{where}: free space where output.dir lives and rerun (the run "
                       "resumes where it stopped; --log-level DEBUG shows the traceback)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as e:
        known = exit_code(e)
        if known is None or (known[0] == DISK_FULL and args.log_level == "DEBUG"):
            raise
        print(known[1], file=sys.stderr)
        return known[0]
