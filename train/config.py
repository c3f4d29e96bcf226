"""Typed training config: YAML presets (configs/train/*.yaml) validated at load, `--set key=value` overrides."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.core.config_base import Strict
from pipeline.core.video_tokens import VIDEO_POOL
from train.data import DataConfig


class ModelConfig(Strict):
    path: str | None = Field(None, description="a LLaVA-OneVision checkpoint (transformers format): dir or hub id")
    tiny: bool = Field(False, description="build the tiny random model (tests, CPU debug) instead of loading one")
    tokenizer: str | None = Field(None, description="tokenizer dir or id (default: model.path)")
    video_token: str = "<video>"
    video_pool_size: Annotated[int, Field(gt=0)] = VIDEO_POOL  # 12x12 + a newline per row = 156 tokens a frame
    init_from: str | None = Field(None, description="a previous stage's run dir or checkpoint: its weights only")
    activation_checkpointing: bool = True

    @model_validator(mode="after")
    def _source(self) -> "ModelConfig":
        if not self.tiny and not self.path:
            raise ValueError("set model.path (a checkpoint) or model.tiny: true")
        return self


class LearningRates(Strict):
    """Per part; 0 freezes the part (the paper freezes the vision tower)."""

    vision_tower: Annotated[float, Field(ge=0)] = 0.0
    projector: Annotated[float, Field(ge=0)] = 1e-5
    language_model: Annotated[float, Field(ge=0)] = 1e-5


class OptimConfig(Strict):
    lr: LearningRates = LearningRates()
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    warmup_rounding: Literal["ceil", "round"] = Field(
        "ceil", description="ceil: the paper's (HF Trainer) warmup steps and lr step/warmup; round: rounded, one step ahead"
    )
    max_steps: Annotated[int, Field(gt=0)]
    global_batch_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="samples per optimizer step over all ranks; accumulation = it / (ranks x data.batch_size)"
    )
    grad_accum: Annotated[int, Field(gt=0)] | None = Field(None, description="set instead of global_batch_size (default 1)")
    loss_average: Literal["sample", "token"] = Field(
        "sample", description="sample: every sample weighs the same (the paper); token: every supervised token does"
    )
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    precision: Literal["fp32", "bf16"] = Field("bf16", description="bf16: bf16 compute over fp32 master weights")
    tf32: bool = Field(True, description="TF32 for fp32 matmuls and convolutions on CUDA devices that have it (the "
                       "paper's --tf32 True); no effect elsewhere")

    @model_validator(mode="after")
    def _one_batch_rule(self) -> "OptimConfig":
        if self.global_batch_size is not None and self.grad_accum is not None:
            raise ValueError("set optim.global_batch_size or optim.grad_accum, not both")
        return self


class TrainData(DataConfig):
    batch_size: Annotated[int, Field(gt=0)] = 1  # per rank
    packing: bool = Field(
        False, description="a micro-batch's items end to end in one row: no padding, any mix of frame counts"
    )
    num_workers: Annotated[int, Field(ge=0)] = 2


class RunOutput(Strict):
    dir: str
    log_every: Annotated[int, Field(gt=0)] = 10
    save_every: Annotated[int, Field(gt=0)] = 500
    keep: Annotated[int, Field(gt=0)] = 2  # checkpoints kept
    console: bool = True  # a progress bar and the log line on stderr (rank 0); the same records go to log.jsonl


class ParallelConfig(Strict):
    """How the ranks share the work. `parallel: fsdp` (a bare string) still means `{sharding: fsdp}`."""

    sharding: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: full replicas; fsdp: FSDP2 over every rank")
    sp_size: Annotated[int, Field(gt=0)] = Field(
        1, description="sequence parallelism: ranks that split each sequence (and its frames); consecutive ranks"
    )


def parallel_section(value: Any) -> Any:
    """`parallel: fsdp` -> `{sharding: fsdp}`; whether FSDP is on for a run is the topology's (`train/topology.py`)."""
    return {"sharding": value} if isinstance(value, str) else value


class StageEval(Strict):
    """`prolongvid eval` on the stage's last checkpoint when training ends (rank 0), into `<checkpoint>/eval/`."""

    bench: str = Field(description="a pipeline output dir (its held-out split) or a Video-MME-shaped question file")
    split: Literal["eval", "train", "all"] = "eval"
    video_root: str | None = Field(None, description="folder of the question file's videos (default: its folder)")
    frames: Annotated[int, Field(gt=0)] | None = Field(None, description="frames a video (default: data.frames)")
    limit: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 4


class TrainConfig(Strict):
    model: ModelConfig
    data: TrainData
    optim: OptimConfig
    output: RunOutput
    parallel: ParallelConfig = ParallelConfig()
    nproc_per_node: Annotated[int, Field(gt=0)] = 1
    seed: int = 0
    eval: StageEval | None = None  # the paper's table for your own data: accuracy after every stage

    @model_validator(mode="after")
    def _packing_alone(self) -> "TrainConfig":
        if self.data.packing and self.parallel.sp_size > 1:
            raise ValueError("data.packing does not combine with parallel.sp_size > 1 yet: set one of them")
        return self

    @classmethod
    def prefill(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The YAML's `parallel: fsdp` as a section before the overrides, so `--set parallel.sp_size=2` works on it."""
        if "parallel" in data:
            data["parallel"] = parallel_section(data["parallel"])
        return data

    @field_validator("parallel", mode="before")
    @classmethod
    def _sharding_alone(cls, value: Any) -> Any:
        """`--set parallel=fsdp`, after the overrides."""
        return parallel_section(value)
