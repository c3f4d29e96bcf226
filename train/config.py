"""Typed training config: YAML presets (configs/train/*.yaml) validated at load, `--set key=value` overrides."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.config_base import _Strict
from train.data import DataConfig


class ModelConfig(_Strict):
    path: str | None = Field(None, description="a LLaVA-OneVision checkpoint (transformers format): dir or hub id")
    tiny: bool = Field(False, description="build the tiny random model (tests, CPU debug) instead of loading one")
    tokenizer: str | None = Field(None, description="tokenizer dir or id (default: model.path)")
    video_token: str = "<video>"
    video_pool_size: Annotated[int, Field(gt=0)] = 12  # 12x12 + a newline per row = 156 tokens a frame
    init_from: str | None = Field(None, description="a previous stage's run dir or checkpoint: its weights only")
    activation_checkpointing: bool = True

    @model_validator(mode="after")
    def _source(self) -> "ModelConfig":
        if not self.tiny and not self.path:
            raise ValueError("set model.path (a checkpoint) or model.tiny: true")
        return self


class LearningRates(_Strict):
    """Per part; 0 freezes the part (the paper freezes the vision tower)."""

    vision_tower: Annotated[float, Field(ge=0)] = 0.0
    projector: Annotated[float, Field(ge=0)] = 1e-5
    language_model: Annotated[float, Field(ge=0)] = 1e-5


class OptimConfig(_Strict):
    lr: LearningRates = LearningRates()
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    max_steps: Annotated[int, Field(gt=0)]
    grad_accum: Annotated[int, Field(gt=0)] = 1
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    precision: Literal["fp32", "bf16"] = "bf16"


class TrainData(DataConfig):
    batch_size: Annotated[int, Field(gt=0)] = 1  # per rank
    num_workers: Annotated[int, Field(ge=0)] = 2


class RunOutput(_Strict):
    dir: str
    log_every: Annotated[int, Field(gt=0)] = 10
    save_every: Annotated[int, Field(gt=0)] = 500
    keep: Annotated[int, Field(gt=0)] = 2  # checkpoints kept


class TrainConfig(_Strict):
    model: ModelConfig
    data: TrainData
    optim: OptimConfig
    output: RunOutput
    parallel: Literal["ddp", "fsdp"] = "ddp"
    nproc_per_node: Annotated[int, Field(gt=0)] = 1
    seed: int = 0
