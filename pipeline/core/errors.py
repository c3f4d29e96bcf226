"""Reject reasons and the exception that carries one.

Every problem with one video ends as a `VideoError(reason, detail)` inside the
stage that found it; the stage turns it into a `Rejection` record (see
`records.py`) instead of letting it escape. Reasons are stable strings: the
rejects table, `--retry-rejects REASON` and the stats group by them.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a video was rejected. The value is what the rejects table stores."""

    MISSING = "missing"  # path does not exist
    UNREADABLE = "unreadable"  # exists but cannot be read (permissions, I/O error)
    NOT_REGULAR_FILE = "not_regular_file"  # a folder, device, fifo or socket with a video name
    SYMLINK_LOOP = "symlink_loop"  # a symbolic link that never reaches a file
    BAD_PATH = "bad_path"  # a path with a NUL byte or bytes that are not text
    INDIRECT_INPUT = "indirect_input"  # a concat list, playlist or image pattern that pulls in other files
    EMPTY_FILE = "empty_file"  # zero bytes
    NOT_MEDIA = "not_media"  # ffprobe does not recognise any container
    TRUNCATED = "truncated"  # container index missing or fewer frames than the header declares
    NO_VIDEO_STREAM = "no_video_stream"  # e.g. an audio-only file
    STILL_IMAGE = "still_image"  # an image (PNG, JPEG...) under a video name
    NO_DURATION = "no_duration"  # zero or unknown duration / frame count
    UNSUPPORTED_CODEC = "unsupported_codec"  # no decoder here can open the codec
    TOO_LONG = "too_long"  # duration beyond the configured limit
    RESOLUTION_TOO_LARGE = "resolution_too_large"
    RESOLUTION_TOO_SMALL = "resolution_too_small"
    PROBE_TIMEOUT = "probe_timeout"
    DECODE_FAILED = "decode_failed"  # the decoders raised on frames the header promised
    FRAME_MISMATCH = "frame_mismatch"  # no decoder could prove a returned frame is the one its index names
    SINGLE_FRAME = "single_frame"  # one frame: a still image in a video container
    TOO_FEW_DISTINCT_FRAMES = "too_few_distinct_frames"  # fewer frames than the shard set needs distinct
    DECODE_TIMEOUT = "decode_timeout"  # the decode ran past decode.timeout_s and was killed
    DECODE_MEMORY = "decode_memory"  # the decode grew past decode.max_memory_mb and was killed
    DECODE_CRASHED = "decode_crashed"  # the decoding process died (segfault, OOM killer)
    # sources
    OUTSIDE_ALLOWED_ROOTS = "outside_allowed_roots"  # resolves outside input.allowed_roots (.. or symlink), or
    # the file a probe or decoder opened does (a folder swapped for a symlink out after listing)
    HARD_LINK = "hard_link"  # under input.allowed_roots, a file with more than one name (input.allow_hard_links)
    FETCH_FAILED = "fetch_failed"  # a remote video could not be copied to scratch (HTTP status / store error in the detail)
    FETCH_TOO_LARGE = "fetch_too_large"  # a remote video larger than input.fetch.max_bytes (refused before copying)
    SOURCE_CHANGED = "source_changed"  # the file at the path is not the one the probe read (replaced mid-run)
    BAD_SOURCE = "bad_source"  # a manifest / LLaVA record without a usable video path
    DUPLICATE_KEY = "duplicate_key"  # a second source with the sample key of an earlier one
    # filters
    TOO_SHORT = "too_short"  # below filters.length.min_duration_s
    OUTSIDE_DURATION_BUCKET = "outside_duration_bucket"  # above filters.length.max_duration_s
    TOO_FEW_FRAMES = "too_few_frames"
    TOO_MANY_FRAMES = "too_many_frames"
    NO_FRAMES = "no_frames"  # the frame set a filter checks is empty
    BLANK_FRAMES = "blank_frames"  # too many black or blank frames
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"
    STATIC = "static"  # nothing moves: a still image held
    SLIDESHOW = "slideshow"  # several scenes, nothing moving inside them
    TOO_MANY_CUTS = "too_many_cuts"
    BLURRY = "blurry"
    LOW_AESTHETIC = "low_aesthetic"
    CAPTION_MISMATCH = "caption_mismatch"  # a caption the frames do not show (CLIP agreement too low)
    NEAR_DUPLICATE = "near_duplicate"  # the same video as a kept one (detail names the kept key)
    TOKEN_BUDGET = "token_budget"  # the sample does not fit the training stages' sequence length
    # LLM stages (captions, QA): retried first; `--retry-rejects 'llm_*'` redoes them later
    LLM_UNAVAILABLE = "llm_unavailable"  # the server could not be reached (connection refused / reset) within the retries
    LLM_HTTP_ERROR = "llm_http_error"  # 429 / 5xx / other non-200 answers after the retries
    LLM_TIMEOUT = "llm_timeout"  # requests ran past llm.http.timeout_s every time
    LLM_BAD_JSON = "llm_bad_json"  # output that does not parse as JSON
    LLM_SCHEMA = "llm_schema"  # parsed JSON that breaks the requested schema
    LLM_EMPTY = "llm_empty"  # an empty caption or answer
    LLM_TRUNCATED = "llm_truncated"  # endless output cut at max_tokens
    LLM_INVALID = "llm_invalid"  # well-formed but wrong: MC answer not an option, time outside the video, a refusal
    LLM_NO_QA = "llm_no_qa"  # every QA type was declined or filtered out
    INTERNAL_ERROR = "internal_error"  # a bug: a stage raised something unexpected (detail has the traceback tail)

    def __str__(self) -> str:
        return self.value


class VideoError(Exception):
    """A per-video failure with a stable reason; never meant to stop a run."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # keep reason and detail across process boundaries (decode child, Ray workers)
        return (VideoError, (self.reason, self.detail))


class Verdict(VideoError):
    """A filter's quality judgement: rejects the video like any `VideoError`, unless the stage only scores
    (`Stage.score_only`), where the harness keeps the video and notes the verdict in `would_reject`."""

    def __reduce__(self):
        return (Verdict, (self.reason, self.detail))


class NotExact(VideoError):
    """A decoder cannot prove that a frame it would return is the frame asked for: try the next exact path."""

    def __init__(self, detail: str = ""):
        super().__init__(Reason.FRAME_MISMATCH, detail)

    def __reduce__(self):
        return (NotExact, (self.detail,))
