"""`prolongvid eval CHECKPOINT BENCH`: accuracy of a checkpoint on a run's eval split or a Video-MME-shaped file;
`prolongvid eval --compare EVAL_DIR_OR_CKPT ...`: the stage-by-stage table of earlier evaluations."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.core.config_load import ConfigError
from shards.split import EVAL, TRAIN

SPLITS = (EVAL, TRAIN, "all")


def _is_run(bench: str) -> bool:
    from pipeline.core.storage import is_remote

    return is_remote(bench) or Path(bench).is_dir()


def evaluate(checkpoint: str, bench: str, out: str | Path, frames: int | None = None, video_root: str | None = None,
             split: str = EVAL, limit: int | None = None, batch_size: int = 4, progress: bool = True) -> dict[str, Any]:
    """Evaluate one checkpoint on one benchmark and write its report into `out`; returns eval.json's content."""
    from tqdm import tqdm

    from evaluation.questions import load_questions
    from evaluation.report import write_report
    from evaluation.runner import load_evaluator

    questions = load_questions(bench, video_root, split)[: limit or None]
    if not questions:
        raise ConfigError(f"BENCH: {bench} has no multiple-choice questions" + (f" in its {split} split" if _is_run(bench) else ""))
    evaluator = load_evaluator(checkpoint, frames)
    rows = []
    with tqdm(total=len(questions), desc="eval", unit="q", disable=not progress, file=sys.stderr) as bar:
        for row in evaluator.run(questions, batch_size):
            rows.append(row)
            bar.update(1)
    info = {"checkpoint": evaluator.source, "bench": str(bench), "split": split if _is_run(bench) else None,
            "frames": evaluator.data.frames, "tokens_per_frame": evaluator.tokens_per_frame}  # fmt: skip
    return write_report(out, rows, info)


def _eval_json(path: str) -> dict[str, Any]:
    """An eval.json, the folder holding one, or a checkpoint / training run whose `eval/` holds one."""
    from evaluation.report import EVAL_FILE

    p = Path(path)
    for candidate in (p, p / EVAL_FILE, p / "eval" / EVAL_FILE):
        if candidate.is_file():
            return {**json.loads(candidate.read_text()), "label": p.name if p.is_dir() else p.parent.name}
    found = sorted(p.glob(f"checkpoints/*/eval/{EVAL_FILE}"))
    if found:
        return {**json.loads(found[-1].read_text()), "label": p.name}
    raise ConfigError(f"--compare: no {EVAL_FILE} at {path} (run `prolongvid eval` on it first)")


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluation.report import compare_table, summary_table, write_compare_chart

    if args.compare:
        results = [_eval_json(p) for p in args.compare]
        print(compare_table(results))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_compare_chart(results, Path(args.out) / "compare.png")
        return 0
    if not args.checkpoint or not args.bench:
        raise ConfigError("eval: give CHECKPOINT and BENCH, or --compare with earlier evaluations")
    out = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
    result = evaluate(args.checkpoint, args.bench, out, args.frames, args.video_root, args.split, args.limit,
                      args.batch_size, progress=not args.no_progress)  # fmt: skip
    print(summary_table(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def add_eval_command(sub: Any) -> None:
    p = sub.add_parser("eval", help="multiple-choice accuracy of a checkpoint on a run's eval split or a Video-MME file")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint dir or a training run dir (its latest checkpoint)")
    p.add_argument("bench", nargs="?", help="a pipeline output dir, on disk or s3:// / gs:// / az:// (its eval split), or a Video-MME-shaped .parquet/.json")
    p.add_argument("--frames", type=int, metavar="K", help="frames a video (default: what the checkpoint trained with)")
    p.add_argument("--out", help="where eval.json, answers.jsonl and accuracy.png go (default: CHECKPOINT/eval)")
    p.add_argument("--video-root", help="folder the question file's videos are in (default: the file's folder)")
    p.add_argument("--split", choices=SPLITS, default=EVAL, help="which split of a run dir to ask (default: eval)")
    p.add_argument("--limit", type=int, help="only the first N questions (a quick look)")
    p.add_argument("--batch-size", type=int, default=4, help="questions generated together")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compare", nargs="+", metavar="EVAL", help="print the table of earlier evaluations (eval dirs, "
                   "checkpoints or training runs), one row each, and write compare.png into --out")
    p.set_defaults(func=cmd_eval)
