"""The README's reject-reason table is the code's reason list, and every key it names tunes something real."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.config_errors import keys_at
from pipeline.errors import Reason

README = Path(__file__).resolve().parents[2] / "README.md"


def reason_rows() -> dict[str, list[str]]:
    text = README.read_text()
    section = text[text.index("## Reject reasons\n"):]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[3])
    return rows


def test_every_reason_is_documented_once_and_nothing_else():
    rows = reason_rows()
    assert sorted(rows) == sorted(r.value for r in Reason)


def test_every_tuning_key_is_a_config_key():
    for reason, keys in reason_rows().items():
        for key in keys:
            path = tuple(key.split("."))
            assert path[-1] in keys_at(RunConfig, path[:-1]), f"{reason}: {key} is not a run config key"
