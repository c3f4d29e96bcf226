"""Helpers every bench script shares: machine description, same-run targets, a plain text table."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from pipeline.core.tables import table as text_table


def machine(packages: tuple[str, ...] = ("ray", "webdataset", "pyarrow", "av", "decord", "numpy")) -> dict:
    info = {"cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version()}
    for name in packages:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    return info


def target(name: str, value: float, op: str, threshold: float) -> dict:
    met = value <= threshold if op == "<=" else value >= threshold
    return {"name": name, "value": round(value, 4), "target": f"{op} {threshold:g}", "met": bool(met)}


def table(headers: list[str], rows: list[list[str]]) -> str:
    """The benches' tables: the first column text, the rest numbers (right-aligned)."""
    return text_table(headers, rows, left_columns=1)


def targets_table(targets: list[dict]) -> str:
    rows = [[t["name"], f"{t['value']:.3f}", t["target"], "yes" if t["met"] else "NO"] for t in targets]
    return table(["target", "value", "wanted", "met"], rows)
