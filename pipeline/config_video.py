"""Config sections for reading videos: inputs, probe limits, decoding, resizing and the frame sets to sample.

They sit below every stage package: the video I/O modules and the training loader read them, and the run
config (`pipeline.config`) composes them with the stage packages' sections.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config_base import Strict


class InputConfig(Strict):
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


class ProbeConfig(Strict):
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    count_frames: bool = Field(
        False, description="count packets when the container stores no frame count (exact, reads the file)"
    )
    keyframe_scan_s: Annotated[float, Field(ge=0)] = Field(
        20.0, description="seconds from the start scanned to estimate keyframe spacing (0: skip); `prolongvid probe` "
        "only: a run takes the spacing over the whole video from the decoder's index"
    )
    check_decoder: bool = Field(True, description="refuse codecs no local decoder can open")
    allow_indirect: bool = Field(
        False, description="accept concat lists, playlists and image patterns, which pull in other files"
    )
    check_tail: bool = Field(
        True, description="read the declared last seconds: a file cut short is `truncated` before any decode"
    )


class LimitsConfig(Strict):
    """Preflight limits: a video outside them is rejected before any decode."""

    max_duration_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    max_width: Annotated[int, Field(gt=0)] = 7680
    max_height: Annotated[int, Field(gt=0)] = 4320
    min_width: Annotated[int, Field(ge=1)] = 32
    min_height: Annotated[int, Field(ge=1)] = 32


class DecodeConfig(Strict):
    backend: Literal["pyav", "decord"] = Field(
        "pyav", description="pyav: exact on every tested codec (README table); decord: the paper's loader, guarded"
    )
    fallback: Literal["pyav", "none"] = Field(
        "pyav", description="with backend decord: what takes a file decord cannot open, index, decode or prove exact"
    )
    decord_codecs: list[str] = Field(
        default_factory=lambda: ["h264", "vp9", "mjpeg"],
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

    @field_validator("backend")
    @classmethod
    def _decord_installed(cls, backend: str) -> str:
        """decord only if the installed build is the one proven exact (a fork stores wrong frames under load)."""
        if backend == "decord":
            from pipeline.decord_build import decord_problem

            problem = decord_problem()
            if problem:
                raise ValueError(problem)
        return backend


class ResizeConfig(Strict):
    policy: Literal["square", "short_side", "none"] = "square"
    size: Annotated[int, Field(gt=0, le=8192)] = 384
    # bicubic matches SigLIP's processor; area (box) is the cheapest correct filter for plain downscaling.
    resample: Literal["area", "bilinear", "bicubic", "lanczos"] = "bicubic"


class FrameSetConfig(Strict):
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


def default_sets() -> list[FrameSetConfig]:
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


class SamplingConfig(Strict):
    sets: list[FrameSetConfig] = Field(default_factory=default_sets)

    @model_validator(mode="after")
    def _unique_names(self) -> "SamplingConfig":
        names = [s.name for s in self.sets]
        if not names:
            raise ValueError("at least one frame set is needed")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"frame set names must be unique, repeated: {dupes}")
        return self
