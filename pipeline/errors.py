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
    UNREADABLE = "unreadable"  # exists but cannot be read (permissions, I/O error, a folder)
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

    def __str__(self) -> str:
        return self.value


class VideoError(Exception):
    """A per-video failure with a stable reason; never meant to stop a run."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
