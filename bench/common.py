"""Helpers every bench script shares: machine description, same-run targets, a plain text table."""

from __future__ import annotations

import os
import platform
from importlib import metadata


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
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def targets_table(targets: list[dict]) -> str:
    rows = [[t["name"], f"{t['value']:.3f}", t["target"], "yes" if t["met"] else "NO"] for t in targets]
    return table(["target", "value", "wanted", "met"], rows)
