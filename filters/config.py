"""The filters' configs, beside the stages that read them: length, visual, CLIP, dedup and the token budget."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.config_base import Strict
from pipeline.video_tokens import TOKENS_PER_FRAME


class LengthFilterConfig(Strict):
    """Duration bucket and frame-count limits (the paper's stage-2 data: 2-5 minute videos)."""

    enabled: bool = True
    min_duration_s: Annotated[float, Field(ge=0)] = 0.0
    max_duration_s: Annotated[float, Field(gt=0)] | None = None
    min_frames: Annotated[int, Field(ge=0)] = 0
    max_frames: Annotated[int, Field(ge=0)] = 0  # 0: no limit

    @model_validator(mode="after")
    def _ordered(self) -> "LengthFilterConfig":
        if self.max_duration_s is not None and self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s ({self.min_duration_s}) exceeds max_duration_s ({self.max_duration_s})")
        if self.max_frames and self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) exceeds max_frames ({self.max_frames})")
        return self


class BudgetStage(Strict):
    """One training stage: frames it samples from the shard and the sequence length it trains at."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    frames: Annotated[int, Field(gt=0)]
    max_tokens: Annotated[int, Field(gt=0)]


def default_budget_stages() -> list[BudgetStage]:
    # The paper's stages; 256000 is its model_max_length.
    return [
        BudgetStage(name="stage1", frames=32, max_tokens=256000),
        BudgetStage(name="stage2", frames=128, max_tokens=256000),
        BudgetStage(name="stage3", frames=192, max_tokens=256000),
    ]


class TokenBudgetConfig(Strict):
    """Tokens a sample costs per training stage: frames x tokens_per_frame + its text."""

    enabled: bool = True
    tokens_per_frame: Annotated[int, Field(gt=0)] = TOKENS_PER_FRAME  # 12x12 pooled patches + 12 newline tokens
    tokenizer: str | None = Field(None, description="tokenizer id or path for exact text counts (default: estimate)")
    chars_per_token: Annotated[float, Field(gt=0)] = 4.0
    template_tokens_per_turn: Annotated[int, Field(ge=0)] = 5  # Qwen chat markup around each turn
    stages: list[BudgetStage] = Field(default_factory=default_budget_stages)
    drop: Literal["none_fit", "any_over", "never"] = Field(
        "none_fit", description="reject a sample that fits no stage / is over in any stage / keep all (count only)"
    )

    @model_validator(mode="after")
    def _unique(self) -> "TokenBudgetConfig":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        if self.enabled and not names:
            raise ValueError("at least one stage is needed when the token budget is enabled")
        return self


class VisualFilterConfig(Strict):
    """Cheap visual checks on already-sampled frames. Scores are 0-255 luma units on small grey frames."""

    enabled: bool = True
    score_only: bool = Field(False, description="keep every video; record scores and what would have been rejected")
    frame_set: str | None = Field(
        None, description="the sampling set checked (None: `caption` if configured, else the shard set)"
    )
    max_frames: Annotated[int, Field(gt=1)] = 120
    work_width: Annotated[int, Field(ge=16)] = 128  # frames are decoded at about this width
    black_level: Annotated[float, Field(ge=0, le=255)] = 20.0  # a frame darker on average is black
    blank_std: Annotated[float, Field(ge=0)] = 4.0  # a frame with less contrast is blank
    max_blank_ratio: Annotated[float, Field(ge=0, le=1)] = 0.5
    min_brightness: Annotated[float, Field(ge=0, le=255)] = 25.0
    max_brightness: Annotated[float, Field(ge=0, le=255)] = 235.0
    min_motion: Annotated[float, Field(ge=0)] = 0.5  # mean |frame difference| below: nothing moves
    cut_diff: Annotated[float, Field(gt=0)] = 30.0  # a jump above: a scene cut
    max_scenes_per_minute: Annotated[float, Field(ge=0)] = 0.0  # 0: no limit
    min_sharpness: Annotated[float, Field(ge=0)] = 100.0  # variance of the Laplacian below: blurry


class ClipFilterConfig(Strict):
    """open_clip scores: video embedding (dedup), aesthetic head, caption-frame agreement. Off until weights are set."""

    enabled: bool = False
    score_only: bool = False
    arch: str = Field("ViT-B-32", description="open_clip model name")
    weights: str | None = Field(None, description="a local weights file or an open_clip pretrained tag")
    arch_config: str | None = Field(None, description="a model config JSON, registered under its file name")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    frame_set: str | None = Field(None, description="frames encoded (None: the shard set)")
    max_frames: Annotated[int, Field(gt=0)] = 32
    batch_size: Annotated[int, Field(gt=0)] = 32
    aesthetic_head: str | None = Field(None, description="weights of the aesthetic MLP head (safetensors / state dict)")
    min_aesthetic: float | None = None
    min_frame_text: float | None = Field(None, description="cosine: the lowest caption-frame agreement allowed")


class DedupConfig(Strict):
    """Near-duplicate removal across the corpus from the CLIP video embeddings: at the end of every run when
    enabled, or on demand with `prolongvid dedup RUN_DIR`."""

    enabled: bool = False
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.95  # cosine at or above: the same video
    method: Literal["auto", "exact", "ann"] = "auto"  # auto: exact blocked products below exact_max, else ANN
    exact_max: Annotated[int, Field(gt=0)] = 50_000
    block: Annotated[int, Field(gt=0)] = 8192
    neighbours: Annotated[int, Field(gt=1)] = 16  # ANN: neighbours examined per video
    list_size: Annotated[int, Field(gt=0)] = 1000  # ANN: videos per inverted list (lists grow with N)
    nprobe: Annotated[int, Field(gt=0)] = 8  # ANN: lists searched per video


class FiltersConfig(Strict):
    length: LengthFilterConfig = LengthFilterConfig()
    visual: VisualFilterConfig = VisualFilterConfig()
    clip: ClipFilterConfig = ClipFilterConfig()
    dedup: DedupConfig = DedupConfig()
    token_budget: TokenBudgetConfig = Field(default_factory=TokenBudgetConfig)
