"""Typed run configuration: YAML in, validated models out, `--set a.b=value` overrides.

Every model forbids unknown keys, so a typo fails at load with the dotted path
of the field (`sampling.sets.0.num_frames: ...`) instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.config_base import _Strict
from pipeline.config_errors import format_validation_error
from pipeline.config_run import FiltersConfig, default_budget_stages, RayConfig, ResourcesConfig, ShardsConfig
from dense_caption.config import LLMConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


class InputConfig(_Strict):
    path: str = Field(description="a folder of videos, a manifest (jsonl/csv/parquet) or a LLaVA JSON")
    format: Literal["auto", "folder", "jsonl", "csv", "parquet", "llava"] = Field(
        "auto", description="auto: a folder, or by the file's suffix (.jsonl/.csv/.parquet; .json is LLaVA)"
    )
    video_root: str | None = Field(
        None, description="where relative video paths of a manifest or LLaVA JSON point (default: its folder)"
    )
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="when set, every video must resolve (symlinks followed) inside one of these folders",
    )
    extensions: list[str] = [".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".ogv", ".ts", ".flv"]
    max_frames_per_sample: Annotated[int, Field(gt=0)] = Field(
        1024, description="a manifest's per-sample num_frames above this is refused (bad_source)"
    )
    recursive: bool = True


class OutputConfig(_Strict):
    dir: Annotated[str, Field(min_length=1, pattern=r"\S", description="the run's own folder (not the current one)")]


class ProbeConfig(_Strict):
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    count_frames: bool = Field(
        False, description="count packets when the container stores no frame count (exact, reads the file)"
    )
    keyframe_scan_s: Annotated[float, Field(ge=0)] = Field(
        20.0, description="seconds from the start scanned to estimate keyframe spacing (0: skip)"
    )
    check_decoder: bool = Field(True, description="refuse codecs no local decoder can open")
    allow_indirect: bool = Field(
        False, description="accept concat lists, playlists and image patterns, which pull in other files"
    )
    check_tail: bool = Field(
        True, description="read the declared last seconds: a file cut short is `truncated` before any decode"
    )


class LimitsConfig(_Strict):
    """Preflight limits: a video outside them is rejected before any decode."""

    max_duration_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    max_width: Annotated[int, Field(gt=0)] = 7680
    max_height: Annotated[int, Field(gt=0)] = 4320
    min_width: Annotated[int, Field(ge=1)] = 32
    min_height: Annotated[int, Field(ge=1)] = 32


class DecodeConfig(_Strict):
    backend: Literal["pyav", "decord"] = Field(
        "pyav", description="pyav: exact on every tested codec (README table); decord: the paper's loader, guarded"
    )
    fallback: Literal["pyav", "none"] = Field(
        "pyav", description="with backend decord: what takes a file decord cannot open, index, decode or prove exact"
    )
    decord_codecs: list[str] = Field(
        default_factory=lambda: ["h264", "vp9", "av1", "mjpeg"],
        description="codecs decord is trusted with (exact on the identity corpus); others go to the fallback",
    )
    truncated: Literal["reject", "keep"] = Field(
        "reject", description="a file whose video decodes well short of its header: reject, or keep its real span"
    )
    min_frames: Annotated[int, Field(ge=1)] = Field(
        2, description="fewer decodable frames rejects the video (1 frame: single_frame)"
    )
    log_dir: str | None = Field(
        None, description="append every decoder message here (a run at --log-level debug uses OUTPUT/logs)"
    )
    threads: Annotated[int, Field(ge=0)] = Field(
        0, description="decode workers for one video, each on its own span of keyframe groups "
        "(0: the CPUs the video stage reserves; `sample`: all CPUs)"
    )
    frame_count_tolerance: Annotated[float, Field(ge=0, le=1)] = Field(
        0.02, description="relative shortfall of decodable frames / span against the header before `truncated`"
    )
    batch_bytes: Annotated[int, Field(gt=0)] = Field(
        32 << 20, description="most raw pixel bytes one decode batch may hold"
    )
    isolate: bool = Field(True, description="decode in a watched child process so a hang or blow-up is cut off")
    timeout_s: Annotated[float, Field(gt=0)] = Field(900.0, description="a decode running longer is killed and rejected")
    max_memory_mb: Annotated[int, Field(gt=0)] = Field(
        4096, description="a decode whose process grows past this RSS is killed and rejected"
    )


class ResizeConfig(_Strict):
    policy: Literal["square", "short_side", "none"] = "square"
    size: Annotated[int, Field(gt=0, le=8192)] = 384
    # bicubic matches SigLIP's processor; area (box) is the cheapest correct filter for plain downscaling.
    resample: Literal["area", "bilinear", "bicubic", "lanczos"] = "bicubic"


class FrameSetConfig(_Strict):
    """One set of frames to pull from a video.

    Modes: `uniform` (k frames over indices [0, N-1], the paper's linspace),
    `fps` (the paper's every-round(video_fps/fps)-th frame with min/max bounds),
    `time_uniform` / `time_fps` (the same in presentation time, right on
    variable-frame-rate files). With `stage_frames` a uniform set stores the
    union of `linspace(0, N-1, k)` for every k listed and `num_frames`, and
    records where each k's frames sit, so a k-frame training stage takes
    exactly the paper's frames.
    """

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    mode: Literal["uniform", "fps", "time_uniform", "time_fps"] = "uniform"
    num_frames: Annotated[int, Field(gt=0)] | None = None
    stage_frames: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="frame counts of the training stages whose exact frames the set stores"
    )
    fps: Annotated[float, Field(gt=0)] | None = None
    min_frames: Annotated[int, Field(ge=0)] = 0
    max_frames: Annotated[int, Field(ge=0)] = 0  # 0: no upper bound
    seek: Literal["exact", "keyframe"] = "exact"
    resize: ResizeConfig = ResizeConfig()
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    min_distinct: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="fraction of the set's frames that must be different frames (else too_few_distinct_frames)"
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> "FrameSetConfig":
        if self.mode in ("uniform", "time_uniform") and self.num_frames is None:
            raise ValueError(f"mode {self.mode!r} needs num_frames")
        if self.mode in ("fps", "time_fps") and self.fps is None:
            raise ValueError(f"mode {self.mode!r} needs fps")
        if self.max_frames and self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) exceeds max_frames ({self.max_frames})")
        if self.stage_frames and (self.mode != "uniform" or self.seek != "exact"):
            raise ValueError("stage_frames needs mode 'uniform' and seek 'exact' (the paper's frame indices)")
        return self


def _default_sets() -> list[FrameSetConfig]:
    return [
        FrameSetConfig(name="shard", mode="uniform", num_frames=192, stage_frames=[32, 128, 192], min_distinct=1.0),
        FrameSetConfig(
            name="caption",
            mode="time_fps",
            fps=1.0,
            resize=ResizeConfig(policy="short_side", size=224, resample="area"),
            jpeg_quality=85,
        ),
    ]


class SamplingConfig(_Strict):
    sets: list[FrameSetConfig] = Field(default_factory=_default_sets)

    @model_validator(mode="after")
    def _unique_names(self) -> "SamplingConfig":
        names = [s.name for s in self.sets]
        if not names:
            raise ValueError("at least one frame set is needed")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"frame set names must be unique, repeated: {dupes}")
        return self


class RunConfig(_Strict):
    """A pipeline run: where videos come from, where results go, how videos are read and kept."""

    input: InputConfig
    output: OutputConfig
    probe: ProbeConfig = ProbeConfig()
    limits: LimitsConfig = LimitsConfig()
    decode: DecodeConfig = DecodeConfig()
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    shards: ShardsConfig = ShardsConfig()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    llm: LLMConfig = LLMConfig()

    @model_validator(mode="after")
    def _shard_set_exists(self) -> "RunConfig":
        sets = {s.name: s for s in self.sampling.sets}
        shard_set = sets.get(self.shards.frame_set)
        if shard_set is None:
            raise ValueError(f"shards.frame_set {self.shards.frame_set!r} names no sampling set (have {sorted(sets)})")
        if self.filters.dedup.enabled and not self.filters.clip.enabled:
            raise ValueError("filters.dedup.enabled needs filters.clip.enabled: dedup compares CLIP embeddings")
        visual = self.filters.visual
        if visual.enabled and visual.frame_set is not None and visual.frame_set not in sets:
            raise ValueError(
                f"filters.visual.frame_set {visual.frame_set!r} names no sampling set (have {sorted(sets)}); "
                "point it at one or set filters.visual.enabled=false"
            )
        if self.llm.enabled and self.llm.captions.enabled and self.llm.captions.frame_set not in sets:
            raise ValueError(
                f"llm.captions.frame_set {self.llm.captions.frame_set!r} names no sampling set (have {sorted(sets)})"
            )
        return self

    @property
    def visual_frame_set(self) -> str:
        names = {s.name for s in self.sampling.sets}
        return self.filters.visual.frame_set or ("caption" if "caption" in names else self.shards.frame_set)


# ---------------------------------------------------------------- loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (["a", "b", "0", "c"], value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {e}") from None
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `value` at `path` inside nested dicts/lists, creating dicts as needed."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {'.'.join(path)}: {where} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if node is None:
                    node = {}
        else:
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:i])} is a value, not a section")


def _model_defaults(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Fill list-valued defaults so `--set sampling.sets.0.x=...` can address them."""
    if model is RunConfig:
        sampling = data.setdefault("sampling", {})
        if isinstance(sampling, dict) and "sets" not in sampling:
            sampling["sets"] = [s.model_dump() for s in _default_sets()]
        filters = data.setdefault("filters", {})
        if isinstance(filters, dict):
            budget = filters.setdefault("token_budget", {})
            if isinstance(budget, dict) and "stages" not in budget:
                budget["stages"] = [s.model_dump() for s in default_budget_stages()]
    return data


def load_config(
    path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    model: type[BaseModel] = RunConfig,
) -> Any:
    """Load YAML (or start empty), apply `key=value` overrides, validate into `model`."""
    data: dict[str, Any] = {}
    origin = None
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = _model_defaults(model, data)
    for item in overrides:
        key_path, value = parse_override(item)
        apply_override(data, key_path, value)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, origin, list(overrides))) from None


def config_record(cfg: BaseModel) -> dict[str, Any]:
    """The config as written into a run's files: JSON-ready, secrets redacted."""
    from pipeline.redact import redacted

    return redacted(cfg.model_dump(mode="json"))


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML: what every output directory keeps beside its results (secrets redacted)."""
    return yaml.safe_dump(config_record(cfg), sort_keys=False)


def write_resolved_config(cfg: BaseModel, out_dir: str | Path, name: str = "config.resolved.yaml") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(dump_config(cfg))
    return target
