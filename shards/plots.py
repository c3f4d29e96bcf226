"""PNG charts of a run's statistics (matplotlib, headless) and a one-file HTML report embedding them."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote


def _bar(ax: Any, labels: list[str], values: list[float], title: str, xlabel: str = "") -> None:
    ax.bar(range(len(values)), values, color="#4878a8")
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)


def write_plots(stats: dict[str, Any], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts = {
        "durations.png": (list(stats["duration_histogram"]), list(stats["duration_histogram"].values()),
                          "samples by duration"),
        "tokens.png": (list(stats["tokens"]), [s.get("mean", 0) for s in stats["tokens"].values()],
                       "mean tokens per sample, by training stage"),
        "rejects.png": (list(stats["rejects_by_reason"]), list(stats["rejects_by_reason"].values()), "rejects by reason"),
        "qa_types.png": (list(stats["qa_by_type"]), list(stats["qa_by_type"].values()), "QA pairs by type"),
    }
    paths = []
    for name, (labels, values, title) in charts.items():
        if not any(values):  # no QA without the LLM, no rejects in a clean run: no empty axes
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        _bar(ax, [str(x) for x in labels], [float(v) for v in values], title)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths.append(out / name)
    return paths


def write_html(stats: dict[str, Any], table_text: str, charts: list[Path], target: str | Path,
               viewer: str | Path | None = None) -> Path:
    """The report; `viewer` (the site of `prolongvid view`, when one was built) is linked relative to the report."""
    path = Path(target)
    link = ""
    if viewer is not None:
        href = os.path.relpath(Path(viewer).resolve(), path.parent.resolve())
        link = f'<p id="viewer"><a href="{html.escape(quote(Path(href).as_posix()))}">look at the samples</a> (the run\'s viewer)</p>'
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in charts
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>prolongvid stats</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;margin:.5em}}
pre{{background:#f4f4f4;padding:1em}}</style></head><body>
<h1>Run statistics</h1>{link}<pre>{html.escape(table_text)}</pre>{images}
<h2>All numbers</h2><pre>{html.escape(json.dumps(stats, indent=1))}</pre></body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    return path
