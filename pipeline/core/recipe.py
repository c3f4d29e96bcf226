"""The paper's stage recipe, the one place its numbers live: each stage's frame count and the sequence length.

The pipeline stores every stage's exact frames (`default_sets`) and budgets each stage's tokens
(`default_budget_stages`); the trainer's config defaults and presets (configs/train/) train them. Stage 4 goes
beyond the paper (sequence parallelism): the trainer has a preset for it, the pipeline's defaults leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingStage:
    name: str
    frames: int  # frames a video gets in this stage


MAX_LENGTH = 256000  # the paper's model_max_length, in every stage
PAPER_STAGES = (TrainingStage("stage1", 32), TrainingStage("stage2", 128), TrainingStage("stage3", 192))
LONG_STAGE = TrainingStage("stage4", 384)
