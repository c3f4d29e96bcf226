"""Many QA parts in one structured request, so the dense caption and the rules are prefilled once, not once per part.

The answer is one JSON object with a key per part (a pair of one type, the
multiple-choice question, the detailed description), each under that part's
own schema. Each part is then checked alone: an unusable part is asked again
in its own request, and a batch whose answer is unusable as a whole after its
retries is asked part by part. Every QA prompt puts its fixed instructions
first and the video's length and dense caption last, so the instructions are
one prefix that the server's prefix cache computes once for all videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dense_caption.templates import Prompts


@dataclass(frozen=True)
class Part:
    """One thing QA asks of the model: `kind` is open, multiple_choice or description; `n` the round of its type."""

    kind: str
    qa_type: str
    n: int = 0

    @property
    def key(self) -> str:
        return self.qa_type if self.n == 0 else f"{self.qa_type}_{self.n + 1}"


def batch_schema(part_schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One object holding every part's answer under its key, in the order the prompt lists them."""
    return {"type": "object", "properties": part_schemas, "required": list(part_schemas), "additionalProperties": False}


def task_line(prompts: Prompts, part: Part, description_question: str) -> str:
    if part.kind == "open":
        t = prompts.qa_types[part.qa_type]
        q, a = t.examples[0]
        return prompts.render("qa_batch_open", key=part.key, type_title=t.title, definition=t.definition,
                              examples=f"Q: {q} A: {a}")  # fmt: skip
    if part.kind == "multiple_choice":
        return prompts.render("qa_batch_multiple_choice", key=part.key)
    return prompts.render("qa_batch_description", key=part.key, question=description_question)


def batch_prompt(prompts: Prompts, parts: list[Part], duration: str, dense_caption: str, description_question: str) -> str:
    tasks = "\n".join(task_line(prompts, p, description_question) for p in parts)
    keys = ", ".join(p.key for p in parts)
    return prompts.render("qa_batch", duration=duration, dense_caption=dense_caption, tasks=tasks, keys=keys)


def chunks(parts: list[Part], size: int) -> list[list[Part]]:
    return [parts[i : i + size] for i in range(0, len(parts), size)]
