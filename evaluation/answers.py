"""Which option a generated answer chose, and accuracy overall and by group.

Small or long-context models do not always answer with the bare letter the prompt asks for: they write
`(B)`, `B. the car`, `The answer is B` or only the option's text. `extract_letter` accepts all of these and
returns None (counted as unparseable, and wrong) when the text names no option or several.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from dense_caption.qa import LETTERS

_LEAD = re.compile(r"^\s*[\(\[]?([A-D])(?:[\)\]\.:,]|$)")  # `B`, `(B)`, `B.`, `B: ...`
_STATED = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*[\(\[]?([A-D])\b", re.IGNORECASE)
_ALONE = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def extract_letter(text: str, options: list[str]) -> str | None:
    """The chosen letter, or None when the answer names no option unambiguously."""
    text = text.strip()
    for pattern in (_LEAD, _STATED):
        found = pattern.search(text)
        if found:
            return found.group(1)
    alone = set(_ALONE.findall(text))
    if len(alone) == 1:
        return alone.pop()
    lowered = text.lower()
    named = [letter for letter, option in zip(LETTERS, options) if option and option.lower() in lowered]
    return named[0] if len(named) == 1 else None


def accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (0-1) and counts of the rows, overall and by duration class, task type and QA type."""

    def summary(group: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(group)
        right = sum(r["correct"] for r in group)
        return {"questions": n, "correct": right, "accuracy": round(right / n, 4) if n else None,
                "unparseable": sum(r["chosen"] is None for r in group)}  # fmt: skip

    out = {"overall": summary(rows)}
    for name, field in (("by_duration", "duration"), ("by_task_type", "task_type"), ("by_qa_type", "qa_type")):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[row[field]].append(row)
        out[name] = {key: summary(groups[key]) for key in sorted(groups)}
    return out
