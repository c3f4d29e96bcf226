"""lmms-eval model `prolongvid`: our checkpoints in lmms-eval's tasks, asked as `prolongvid eval` asks them.

    pip install -e ".[lmms]"
    lmms-eval --model prolongvid --model_args pretrained=CKPT,frames=128 --tasks videomme

Registered through the `lmms_eval.models` entry point (pyproject.toml). Each request's video (the task's
`doc_to_visual`: a path) is decoded with the exact `linspace(0, N-1, frames)` frames, its text (the task's
`doc_to_text`) becomes the human turn after `<image>` as training writes it, and the checkpoint answers
greedily through `VideoLlava`'s 156-token video path (`evaluation/runner.py`), `batch_size` requests at a time.
Only generation is offered: log-likelihood and multi-round tasks are refused with a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from evaluation.questions import Question, decoded_frames, parse_options
from evaluation.runner import load_evaluator

MEDIA = "<image>"


def manifest() -> Any:
    """The entry point lmms-eval loads: `--model prolongvid` is `ProLongVid` (imported here: lmms-eval's model
    registry loads this module while it initialises)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="prolongvid", simple_class_path="evaluation.lmms.ProLongVid")


class ProLongVid(lmms):
    """A checkpoint of `prolongvid train` (or its run dir: the latest checkpoint); `frames` defaults to the
    frame count its stage trained with."""

    def __init__(self, pretrained: str, frames: int | None = None, batch_size: int | str = 1,
                 device: str | None = None, max_new_tokens: int = 16, **_: Any) -> None:  # fmt: skip
        super().__init__()
        self.evaluator = load_evaluator(pretrained, int(frames) if frames else None, device)
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)

    def question(self, request: Instance) -> Question:
        context, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if not visuals or not isinstance(visuals[0], (str, Path)):
            raise ValueError(f"{task} document {doc_id}: prolongvid takes one video path a question, got {visuals!r}")
        text = context.replace(MEDIA, "").strip()
        return Question(f"{task}-{doc_id}", f"{MEDIA}\n{text}", parse_options(text), "", "", task, "lmms-eval",
                        decoded_frames(Path(visuals[0])), str(visuals[0]))  # fmt: skip

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            budget = max(int((r.args[1] or {}).get("max_new_tokens", self.max_new_tokens)) for r in batch)
            answers += self.evaluator.answer([self.question(r) for r in batch], max_new_tokens=budget)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("prolongvid answers generate_until tasks (multiple choice by letter), not loglikelihood")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("prolongvid answers single-round questions")
