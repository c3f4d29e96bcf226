"""Prompt templates: text files under `dense_caption/prompts/` (or `llm.prompts_dir`), filled with `string.Template`.

Substitution is one pass over the template file only: values (video facts,
earlier captions written by the model) are inserted as plain text and never
read as template syntax, so model output cannot inject placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

import yaml

from dense_caption.config import QA_TYPES

BUILTIN = Path(__file__).parent / "prompts"
FILES = (
    "system",
    "clip_caption",
    "segment_summary",
    "video_caption",
    "qa_open",
    "qa_multiple_choice",
    "detailed_description",
)
# The one-request QA prompt and its task lines: taken from the built-in folder when a custom folder lacks them,
# so prompt folders written before they existed keep working
BATCH_FILES = ("qa_batch", "qa_batch_open", "qa_batch_multiple_choice", "qa_batch_description")


@dataclass(frozen=True)
class QAType:
    name: str
    title: str
    definition: str
    examples: tuple[tuple[str, str], ...]

    def examples_text(self) -> str:
        return "\n".join(f"Q: {q}\nA: {a}" for q, a in self.examples)


class Prompts:
    """All templates of one run, loaded and checked once per worker."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else BUILTIN
        missing = [f"{name}.txt" for name in FILES if not (self.folder / f"{name}.txt").is_file()]
        if not (self.folder / "qa_types.yaml").is_file():
            missing.append("qa_types.yaml")
        if missing:
            raise FileNotFoundError(f"prompt folder {self.folder} lacks {missing}")
        self.templates = {name: Template((self.folder / f"{name}.txt").read_text()) for name in FILES}
        for name in BATCH_FILES:
            path = self.folder / f"{name}.txt"
            self.templates[name] = Template((path if path.is_file() else BUILTIN / f"{name}.txt").read_text())
        self.system = self.templates["system"].template.strip()
        self.qa_types = self._load_types(self.folder / "qa_types.yaml")

    @staticmethod
    def _load_types(path: Path) -> dict[str, QAType]:
        raw = yaml.safe_load(path.read_text()) or {}
        types = {}
        for name in QA_TYPES:
            entry = raw.get(name)
            if not isinstance(entry, dict) or not entry.get("definition") or not entry.get("examples"):
                raise ValueError(f"{path}: QA type {name!r} needs a definition and examples")
            examples = tuple((str(e["q"]), str(e["a"])) for e in entry["examples"])
            types[name] = QAType(name, str(entry.get("title", name)), str(entry["definition"]), examples)
        return types

    def render(self, name: str, **values: object) -> str:
        return self.templates[name].substitute({k: str(v) for k, v in values.items()}).strip()


def mmss(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60:02d}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def span(start_s: float, end_s: float) -> str:
    return f"[{mmss(start_s)}-{mmss(end_s)}]"
