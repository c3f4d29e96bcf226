"""The README text: its reject-reason table is the code's reason list, its keys are full config keys, its links stay inside."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.run_config import RunConfig
from pipeline.core.config_errors import keys_at
from pipeline.core.errors import Reason

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


NOT_KEYS = {"frames.mjpeg", "decode.sets.<set>.stages", "resume.damaged_shards", "totals.input_rows",  # sample / run.json fields
            "meta.<section>", "data.js"}  # a task's data between stages; the viewer's file


def test_every_dotted_name_in_the_readme_is_a_full_config_key():
    """`llm.captions.clip_s`, never a shortened `captions.clip_s`: a user copies these into --set. A sample's
    fields (`video.keyframe_interval_s`) are names of the sample model."""
    from pipeline.core.sample import SampleMeta
    from train.config import TrainConfig

    text = README.read_text()
    wrong = []
    for name in set(re.findall(r"`([a-z_][a-z0-9_]*(?:\.[a-z0-9_<>]+)+)`", text)):
        if name in NOT_KEYS or name.rsplit(".", 1)[-1] in ("yaml", "json", "jsonl", "parquet", "txt", "toml"):
            continue
        path = tuple(name.split("."))
        if not any(path[-1] in keys_at(model, path[:-1]) for model in (RunConfig, TrainConfig, SampleMeta)):
            wrong.append(name)
    assert wrong == []


def test_links_stay_inside_the_repository():
    root = README.parent
    for target in re.findall(r"\]\(([^)]+)\)", README.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        path = (root / target.split("#")[0]).resolve()
        assert path.is_relative_to(root) and path.exists(), target
