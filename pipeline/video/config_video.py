"""Config sections for reading videos: inputs, probe limits, decoding, resizing and the frame sets to sample.

They sit below every stage package: the video I/O modules and the training loader read them, and the run
config (`pipeline.config`) composes them with the stage packages' sections.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.core.config_base import (
    Attempts, MAX_MEMORY_MB, MAX_SAMPLE_FRAMES, MAX_VIDEO_FRAMES, Bytes, Fps, Range, RunSection, SampleFrames, SampleFramesOrZero,
    Seconds, SecondsOrZero, Share, Side, Threads, VideoSeconds,
)
from pipeline.core.recipe import PAPER_STAGES

# Containers ffmpeg reads whose frames the identity corpus proves exact (README: codec x backend table).
VIDEO_EXTENSIONS = [
    ".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".ogv", ".ts", ".flv", ".wmv", ".asf", ".3gp", ".3g2",
    ".mpg", ".mpeg", ".m2ts", ".mts", ".vob", ".m2v", ".divx", ".f4v", ".mxf",
]
Extension = Annotated[str, Field(pattern=r"^\.[^./\\\s]{1,16}$")]  # one suffix, as os.path.splitext gives it


class FetchConfig(RunSection):
    """How a remote video (object store, or http(s) when allowed) is copied to node-local scratch for decoding."""

    max_bytes: Bytes = Field(64 << 30, description="a larger video is rejected (fetch_too_large) before a byte is copied")
    timeout_s: Seconds = Field(600.0, description="per attempt: connecting and the whole body")
    retries: Attempts = Field(5, description="extra attempts on 5xx, 429, a reset or a timeout (the store's client "
                              "retries object stores itself)")
    backoff_s: Seconds = Field(1.0, description="the first wait between attempts; it doubles each time")
    scratch_dir: str = Field("", description="node-local folder for the copies (default: the temp dir); a killed "
                             "worker's copies are removed by the next run on that node")


class HTTPInputConfig(RunSection):
    enabled: bool = Field(False, description="accept http(s):// video URLs in manifest rows (a URL list); off: such "
                          "rows are rejected (bad_source)")


class InputConfig(RunSection):
    path: str = Field(description="a folder of videos, a manifest (jsonl/csv/parquet) or a LLaVA JSON; local, or an "
                      "object-store URL (s3://bucket/prefix/, gs://, az://)")
    format: Literal["auto", "folder", "jsonl", "csv", "parquet", "llava"] = Field(
        "auto", description="auto: a folder, or by the file's suffix (.jsonl/.csv/.parquet; .json is LLaVA)"
    )
    video_root: str | None = Field(
        None, description="where relative video paths of a manifest or LLaVA JSON point (default: its folder)"
    )
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="when set, every video must resolve (symlinks followed) inside one of these folders, or, for "
        "remote videos, start with one of these URL prefixes (s3://bucket/prefix/, https://host/prefix/); a redirect "
        "is checked too",
    )
    allow_hard_links: bool = Field(
        False, description="with allowed_roots: accept a file that has other names (st_nlink > 1); off because a hard "
        "link inside the roots to a file outside them is the outside file, and no path check can see it",
    )
    extensions: Annotated[list[Extension], Field(min_length=1)] = Field(
        default_factory=lambda: list(VIDEO_EXTENSIONS),
        description="file suffixes a folder input reads as videos (case ignored); others are counted as skipped",
    )
    max_frames_per_sample: SampleFrames = Field(
        1024, description=f"frames one sample may hold (at most {MAX_SAMPLE_FRAMES}): a frame set asking for more "
        "fails at load, a manifest's per-sample num_frames above it is refused (bad_source)"
    )
    recursive: bool = True
    fetch: FetchConfig = FetchConfig()
    http: HTTPInputConfig = HTTPInputConfig()


class ProbeConfig(RunSection):
    timeout_s: Seconds = 30.0
    count_frames: bool = Field(
        False, description="count packets when the container stores no frame count (exact, reads the file)"
    )
    keyframe_scan_s: SecondsOrZero = Field(
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


class LimitsConfig(RunSection):
    """Preflight limits: a video outside them is rejected before any decode."""

    max_duration_s: VideoSeconds = 4 * 3600.0
    max_width: Side = 7680
    max_height: Side = 4320
    min_width: Side = 32
    min_height: Side = 32

    @model_validator(mode="after")
    def _ordered(self) -> "LimitsConfig":
        for side in ("width", "height"):
            low, high = getattr(self, f"min_{side}"), getattr(self, f"max_{side}")
            if low > high:
                raise ValueError(f"min_{side} ({low}) exceeds max_{side} ({high}): every video would be rejected")
        return self


class DecodeConfig(RunSection):
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
    min_frames: Annotated[int, Range(1, MAX_VIDEO_FRAMES)] = Field(
        2, description="fewer decodable frames rejects the video (1 frame: single_frame)"
    )
    log_dir: str | None = Field(
        None, description="append every decoder message here (a run at --log-level debug uses OUTPUT/logs)"
    )
    threads: Threads = Field(
        0, description="decode workers for one video, each on its own span of keyframe groups "
        "(0: the CPUs the video stage reserves; `sample`: all CPUs; at most 4x this machine's CPUs)"
    )
    frame_count_tolerance: Share = Field(
        0.02, description="relative shortfall of decodable frames / span against the header before `truncated`"
    )
    batch_bytes: Bytes = Field(
        32 << 20, description="most raw pixel bytes one decode batch may hold"
    )
    skip_unwanted: bool = Field(
        True, description="pyav: frames no wanted frame needs (H.264 non-reference frames) are never "
        "decoded; a wanted frame that does not come out turns it off for the file, caught by its time"
    )
    isolate: bool = Field(True, description="decode in a watched child process so a hang or blow-up is cut off")
    timeout_s: Seconds = Field(900.0, description="a decode running longer is killed and rejected")
    max_memory_mb: Annotated[int, Range(0, MAX_MEMORY_MB, above=True)] = Field(
        4096, description="a decode whose process grows past this RSS is killed and rejected"
    )

    @field_validator("backend")
    @classmethod
    def _decord_installed(cls, backend: str) -> str:
        """decord only if the installed build is the one proven exact (a fork stores wrong frames under load)."""
        if backend == "decord":
            from pipeline.video.decord_build import decord_problem

            problem = decord_problem()
            if problem:
                raise ValueError(problem)
        return backend


class ResizeConfig(RunSection):
    policy: Literal["square", "short_side", "none"] = "square"
    size: Annotated[int, Range(0, 8192, above=True)] = 384
    # bicubic matches SigLIP's processor; area (box) is the cheapest correct filter for plain downscaling.
    resample: Literal["area", "bilinear", "bicubic", "lanczos"] = "bicubic"
    scaler: Literal["pil", "swscale"] = Field(
        "pil", description="pil: decode to RGB at full size, then PIL's filter on RGB, as SigLIP's processor does "
        "(the paper's pixels; README: pixel fidelity); swscale: libswscale straight from YUV (cheaper; 30-37 dB of the "
        "processor's pixels before any JPEG)"
    )


class FrameSetConfig(RunSection):
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
    num_frames: SampleFrames | None = None
    stage_frames: list[SampleFrames] = Field(
        default_factory=list, description="frame counts of the training stages whose exact frames the set stores"
    )
    fps: Fps | None = None
    min_frames: SampleFramesOrZero = 0
    max_frames: SampleFramesOrZero = 0  # 0: no upper bound
    seek: Literal["exact", "keyframe"] = "exact"
    resize: ResizeConfig = ResizeConfig()
    jpeg_quality: Annotated[int, Range(1, 100)] = 85
    jpeg_subsampling: Literal["4:4:4", "4:2:2", "4:2:0"] = Field(
        "4:4:4", description="JPEG chroma sampling: 4:4:4 keeps the colour the model sees; 4:2:0 halves it both ways"
    )
    min_distinct: Share = Field(
        0.0, description="fraction of the set's frames that must be different frames (else too_few_distinct_frames)"
    )

    @field_validator("jpeg_subsampling", mode="before")
    @classmethod
    def _unquoted(cls, value):
        """YAML 1.1 reads an unquoted 4:2:0 as the base-60 number 14520 (4*3600 + 2*60 + 0): read it back."""
        if isinstance(value, int) and not isinstance(value, bool):
            hours, rest = divmod(value, 3600)
            return f"{hours}:{rest // 60}:{rest % 60}"
        return value

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
        FrameSetConfig(name="shard", mode="uniform", num_frames=PAPER_STAGES[-1].frames,
                       stage_frames=[s.frames for s in PAPER_STAGES], min_distinct=1.0),
        FrameSetConfig(
            name="caption",
            mode="time_fps",
            fps=1.0,
            resize=ResizeConfig(policy="short_side", size=224, resample="area", scaler="swscale"),
            jpeg_quality=85,
            jpeg_subsampling="4:2:0",
        ),
    ]


class SamplingConfig(RunSection):
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
