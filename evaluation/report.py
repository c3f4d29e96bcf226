"""What an evaluation leaves behind, and the stage-by-stage table.

`<out>/eval.json`: the checkpoint, frames, benchmark and accuracy (overall, by duration class, task type and QA
type, with unparseable counts); `<out>/answers.jsonl`: one line per question (its output, the letter read from
it, right or wrong); `<out>/accuracy.png`: a bar chart by duration class and task type. `compare_table` puts
several checkpoints' eval.json side by side, as the paper's Video-MME table puts its stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation.answers import accuracy

EVAL_FILE = "eval.json"
ANSWERS_FILE = "answers.jsonl"
CHART_FILE = "accuracy.png"
DURATIONS = ("short", "medium", "long")


def write_report(out_dir: str | Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {**info, **accuracy(rows)}
    (out / EVAL_FILE).write_text(json.dumps(result, indent=1))
    with open(out / ANSWERS_FILE, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    write_chart(result, out / CHART_FILE)
    return result


def _percent(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("accuracy") is None:
        return "-"
    return f"{100 * summary['accuracy']:.1f}"


def write_chart(result: dict[str, Any], path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("all", result["overall"])] + list(result["by_duration"].items()) + \
        [(f"task: {k}", v) for k, v in result["by_task_type"].items()]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(groups) + 2), 3.5))
    ax.bar(range(len(groups)), [100 * (v["accuracy"] or 0) for _, v in groups], color="#4878a8")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{k} ({v['questions']})" for k, v in groups], rotation=30, ha="right", fontsize=8)
    ax.axhline(25, color="grey", linestyle=":", linewidth=1)  # chance with four options
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(title or f"{Path(result['checkpoint']).name}, {result['frames']} frames")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_table(result: dict[str, Any]) -> str:
    from pipeline.core.tables import table

    rows: list[list[Any]] = [["overall", _percent(result["overall"]), result["overall"]["questions"],
                              result["overall"]["unparseable"]]]  # fmt: skip
    for name, field in (("duration", "by_duration"), ("task", "by_task_type"), ("QA type", "by_qa_type")):
        rows += [[f"{name} {k}", _percent(v), v["questions"], v["unparseable"]] for k, v in result[field].items()]
    return table([f"{Path(result['checkpoint']).name} ({result['frames']} frames)", "accuracy %", "questions",
                  "unparseable"], rows)  # fmt: skip


def compare_table(results: list[dict[str, Any]]) -> str:
    """One row per checkpoint: frames, accuracy by duration class (the paper's Video-MME columns), overall."""
    from pipeline.core.tables import table

    durations = [d for d in DURATIONS if any(d in r["by_duration"] for r in results)]
    durations += sorted({d for r in results for d in r["by_duration"]} - set(durations))
    rows = [[r.get("label") or Path(r["checkpoint"]).name, r["frames"],
             *(_percent(r["by_duration"].get(d)) for d in durations), _percent(r["overall"]),
             r["overall"]["questions"]] for r in results]  # fmt: skip
    return table(["checkpoint", "frames", *durations, "overall", "questions"], rows)


def write_compare_chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["overall", *[d for d in DURATIONS if any(d in r["by_duration"] for r in results)]]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(columns) * len(results) / 2 + 2), 3.5))
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        values = [r["overall"] if c == "overall" else r["by_duration"].get(c) for c in columns]
        ax.bar([x + i * width for x in range(len(columns))], [100 * ((v or {}).get("accuracy") or 0) for v in values],
               width, label=f"{r.get('label') or Path(r['checkpoint']).name} ({r['frames']}f)")
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(columns))])
    ax.set_xticklabels(columns)
    ax.axhline(25, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
