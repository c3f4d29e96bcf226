"""Plain aligned text tables: what the CLI, the run summary and `stats` print."""

from __future__ import annotations

from typing import Any


def table(headers: list[str], rows: list[list[Any]], left_columns: int | None = None) -> str:
    """A plain aligned text table: every column left-aligned, or only the first `left_columns` (text) and the
    rest right-aligned (numbers, as the benches print them)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    left = len(headers) if left_columns is None else left_columns
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
