"""What the decoders said about one video: kept quiet on the console, first message into the reject detail.

PyAV leaves libav silent unless a level is set; here libav's errors are
captured (not printed) while a video decodes, together with the decoders' own
notes (a skipped packet, a stopped demux). A rejected video's detail carries
the first of them; at debug level every message also goes to the `decoder`
logger, which a run writes under `OUTPUT/logs/`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("pipeline.decoder")

_NOISE = ("deprecated pixel format", "No accelerated colorspace conversion")


class DecoderLog:
    """Messages from one video's decode, in order."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def note(self, text: str) -> None:
        text = " ".join(str(text).split())
        if text and not any(n in text for n in _NOISE):
            self.messages.append(text[:300])
            log.debug("%s", text)

    def first(self) -> str | None:
        return self.messages[0] if self.messages else None

    def first_suffix(self) -> str:
        first = self.first()
        return f" (decoder: {first})" if first else ""

    def open_options(self) -> dict[str, str]:
        return {}


@contextmanager
def captured(decoder_log: DecoderLog) -> Iterator[DecoderLog]:
    """Capture libav's error messages from every thread into `decoder_log` while the block runs."""
    import av.logging

    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            try:
                yield decoder_log
            finally:
                for _level, name, message in list(logs):
                    decoder_log.note(f"{name}: {message}" if name else message)
    finally:
        av.logging.set_level(previous)
