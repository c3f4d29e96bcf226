"""The filters' configs, beside the stages that read them: length, visual, CLIP, dedup and the token budget."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.core.config_base import (
    MAX_FPS, MAX_SAMPLE_FRAMES, MAX_TOKENS, Luma, Range, RunSection, SampleFrames, Share, Tokens, VideoFrames,
    VideoSeconds, VideoSecondsOrZero, Workers,
)
from pipeline.core.recipe import MAX_LENGTH, PAPER_STAGES
from pipeline.core.video_tokens import TOKENS_PER_FRAME


class LengthFilterConfig(RunSection):
    """Duration bucket and frame-count limits (the paper's stage-2 data: 2-5 minute videos)."""

    enabled: bool = True
    min_duration_s: VideoSecondsOrZero = 0.0
    max_duration_s: VideoSeconds | None = None
    min_frames: VideoFrames = 0
    max_frames: VideoFrames = 0  # 0: no limit

    @model_validator(mode="after")
    def _ordered(self) -> "LengthFilterConfig":
        if self.max_duration_s is not None and self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s ({self.min_duration_s}) exceeds max_duration_s ({self.max_duration_s})")
        if self.max_frames and self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) exceeds max_frames ({self.max_frames})")
        return self


class BudgetStage(RunSection):
    """One training stage: frames it samples from the shard and the sequence length it trains at."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    frames: SampleFrames
    max_tokens: Tokens


def default_budget_stages() -> list[BudgetStage]:
    """The paper's stages at its model_max_length."""
    return [BudgetStage(name=s.name, frames=s.frames, max_tokens=MAX_LENGTH) for s in PAPER_STAGES]


class TokenBudgetConfig(RunSection):
    """Tokens a sample costs per training stage: frames x tokens_per_frame + its text."""

    enabled: bool = True
    tokens_per_frame: Tokens = TOKENS_PER_FRAME  # 12x12 pooled patches + 12 newline tokens
    tokenizer: str | None = Field(None, description="tokenizer id or path for exact text counts (default: estimate)")
    chars_per_token: Annotated[float, Range(0, 64, above=True)] = 4.0
    template_tokens_per_turn: Annotated[int, Range(0, MAX_TOKENS)] = 5  # Qwen chat markup around each turn
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


class VisualFilterConfig(RunSection):
    """Cheap visual checks on already-sampled frames. Scores are 0-255 luma units on small grey frames."""

    enabled: bool = True
    score_only: bool = Field(False, description="keep every video; record scores and what would have been rejected")
    frame_set: str | None = Field(
        None, description="the sampling set checked (None: `caption` if configured, else the shard set)"
    )
    max_frames: Annotated[int, Range(1, MAX_SAMPLE_FRAMES, above=True)] = 120
    work_width: Annotated[int, Range(16, 8192)] = 128  # frames are decoded at about this width
    black_level: Luma = 20.0  # a frame darker on average is black
    blank_std: Luma = 4.0  # a frame with less contrast is blank
    max_blank_ratio: Share = 0.5
    min_brightness: Luma = 25.0
    max_brightness: Luma = 235.0
    min_motion: Luma = 0.5  # mean |frame difference| below: nothing moves
    cut_diff: Annotated[float, Range(0, 255, above=True)] = 30.0  # a jump above: a scene cut
    max_scenes_per_minute: Annotated[float, Range(0, 60 * MAX_FPS)] = 0.0  # 0: no limit (at most a cut a frame)
    # variance of the Laplacian below: blurry (at most 1020^2, the Laplacian of 0-255 luma spans -1020..1020)
    min_sharpness: Annotated[float, Range(0, 1020.0**2)] = 100.0


class ClipFilterConfig(RunSection):
    """open_clip scores: video embedding (dedup), aesthetic head, caption-frame agreement. Off until weights are set."""

    enabled: bool = False
    score_only: bool = False
    arch: str = Field("ViT-B-32", description="open_clip model name")
    weights: str | None = Field(None, description="a local weights file or an open_clip pretrained tag")
    arch_config: str | None = Field(None, description="a model config JSON, registered under its file name")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    frame_set: str | None = Field(None, description="frames encoded (None: the shard set)")
    max_frames: SampleFrames = 32
    batch_size: Annotated[int, Range(0, 65536, above=True)] = 32
    aesthetic_head: str | None = Field(None, description="weights of the aesthetic MLP head (safetensors / state dict)")
    min_aesthetic: Annotated[float, Range(0, 10)] | None = Field(None, description="on the LAION 0-10 scale")
    min_frame_text: Annotated[float, Range(-1, 1)] | None = Field(
        None, description="cosine: the lowest caption-frame agreement allowed"
    )


class DedupConfig(RunSection):
    """Near-duplicate removal across the corpus from the CLIP video embeddings: at the end of every run when
    enabled, or on demand with `prolongvid dedup RUN_DIR`."""

    enabled: bool = False
    threshold: Annotated[float, Range(0, 1, above=True)] = 0.95  # cosine at or above: the same video
    method: Literal["auto", "exact", "ann"] = "auto"  # auto: exact blocked products below exact_max, else ANN
    exact_max: Annotated[int, Range(0, 1 << 31, above=True)] = 50_000
    block: Workers = 8192  # rows per block of the exact blocked products
    neighbours: Annotated[int, Range(1, 4096, above=True)] = 16  # ANN: neighbours examined per video
    list_size: Workers = 1000  # ANN: videos per inverted list (lists grow with N)
    nprobe: Annotated[int, Range(0, 65536, above=True)] = 8  # ANN: lists searched per video


class FiltersConfig(RunSection):
    length: LengthFilterConfig = LengthFilterConfig()
    visual: VisualFilterConfig = VisualFilterConfig()
    clip: ClipFilterConfig = ClipFilterConfig()
    dedup: DedupConfig = DedupConfig()
    token_budget: TokenBudgetConfig = Field(default_factory=TokenBudgetConfig)
