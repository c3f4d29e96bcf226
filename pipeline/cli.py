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
from pathlib import Path

from pipeline.core.config_load import ConfigError, write_resolved_config

from pipeline.cli_runs import add_run_commands
from pipeline.run_config import RunConfig, load_run_config
from pipeline.core.errors import VideoError
from pipeline.plan import add_plan_command
from evaluation.cli import add_eval_command
from pipeline.video.probe import ToolMissing
from dense_caption.http_backend import ServerUnavailable
from pipeline.resource_watch import EXIT_CODE as RESOURCES_GONE, ResourcesGone
from pipeline.run import RunLocked
from pipeline.run_summary import print_run_summary
from pipeline.core.sample import NewerFormat
from shards.reader import NotARunDir
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
    (ResourcesGone, RESOURCES_GONE, "error: "),  # no node could run a pool's tasks for ray.resource_wait_s
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

    add_run_commands(sub)  # pipeline/cli_runs.py: stats, view, audit, dedup, export-llava
    add_plan_command(sub)  # pipeline/plan.py

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

    p = sub.add_parser("train", help="train the video LLM on a run's shards (configs/train/*.yaml)")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. output.dir=out/train/x")
    p.add_argument("--dry-run", action="store_true", help="print the per-GPU memory estimate, train nothing")
    p.set_defaults(func=cmd_train)  # train/cli.py
    add_eval_command(sub)  # evaluation/cli.py

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
