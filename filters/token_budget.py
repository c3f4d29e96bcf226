"""Token budget per training stage: frames x tokens per frame + the sample's text, against each stage's length.

The paper pools each frame to 12x12 patches plus a newline per row (156
tokens), so a 192-frame sample costs ~30K tokens before any text. Text is
counted with a real tokenizer when one is configured (loaded once per worker)
or estimated from characters otherwise; counts land in `meta['tokens']` and the
index so the trainer and `stats` see them.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.core.config_run import StageResources
from filters.config import TokenBudgetConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.core.stage import Stage
from pipeline.core.task import VideoTask


def conversation_texts(meta: dict[str, Any]) -> list[list[str]]:
    """The turns of every conversation on the sample (LLaVA records under meta['conversations'])."""
    out = []
    for record in meta.get("conversations") or []:
        turns = record.get("conversations", []) if isinstance(record, dict) else []
        out.append([str(t.get("value", "")) for t in turns if isinstance(t, dict)])
    return out


class TokenBudget(Stage):
    name = "token_budget"
    may_read = ("meta.num_frames", "meta.conversations")
    writes = ("meta.tokens",)

    def __init__(self, cfg: TokenBudgetConfig, resources: StageResources | None = None):
        super().__init__(resources)
        self.cfg = cfg

    def setup(self) -> None:
        self._tokenizer = None
        if self.cfg.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.cfg.tokenizer)

    def count_text(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / self.cfg.chars_per_token)

    def process(self, task: VideoTask) -> VideoTask:
        own = task.meta.get("num_frames")  # a per-sample count: the trainer feeds that many frames in every stage
        convs = conversation_texts(task.meta)
        # The longest conversation decides: the trainer packs one conversation per sequence.
        text = max(
            (sum(self.count_text(t) + self.cfg.template_tokens_per_turn for t in turns) for turns in convs),
            default=0,
        )
        tokens = {"text": text}
        over = []
        for stage in self.cfg.stages:
            frames = int(own) if own else stage.frames  # the trainer repeats frames of a short video (the paper)
            total = frames * self.cfg.tokens_per_frame + text
            tokens[stage.name] = total
            if total > stage.max_tokens:
                over.append(f"{stage.name} {total} > {stage.max_tokens}")
        task.meta["tokens"] = tokens
        drop = self.cfg.drop
        if over and (drop == "any_over" or (drop == "none_fit" and len(over) == len(self.cfg.stages))):
            raise VideoError(Reason.TOKEN_BUDGET, "; ".join(over))
        return task
