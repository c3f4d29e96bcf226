"""What the decoders said about one video: kept quiet on the console, first message into the reject detail.

PyAV leaves libav silent unless a level is set; here libav's errors are
captured (not printed) while a video decodes, together with the decoders' own
notes (a skipped packet, a stopped demux). A rejected video's detail carries
the first of them. With `decode.log_dir` set (a run at `--log-level debug`
sets it to `OUTPUT/logs`) every message is also appended, with its source, to
`decoder-<pid>.log` there: one file per decoding process, no locks needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("pipeline.decoder")

_TELLING = ("partial file", "truncat", "end of file", "moov atom not found")
_NOISE = ("deprecated pixel format", "No accelerated colorspace conversion")


class DecoderLog:
    """Messages from one video's decode, in order."""

    def __init__(self, source: str = "", log_dir: str | None = None) -> None:
        self.messages: list[str] = []
        self.source = source
        self.log_dir = log_dir
        self._closed: list[object] = []

    def free_later(self, *closed: object) -> None:
        """Hold closed PyAV containers and streams until libav no longer logs into Python (`captured` ends).

        A frame-threaded codec context's threads may log as it is freed, and a log message into Python needs
        the GIL, which the thread freeing it holds while it waits for them: a deadlock (PyAV issues #909,
        #367). Freed after logging is switched off again, their messages go nowhere and nothing waits.
        """
        self._closed.extend(c for c in closed if c is not None)

    def free_closed(self) -> None:
        self._closed.clear()

    def note(self, text: str) -> None:
        text = " ".join(str(text).split())
        if text and not any(n in text for n in _NOISE):
            self.messages.append(text[:300])
            log.debug("%s: %s", self.source, text)
            if self.log_dir:
                try:
                    with open(os.path.join(self.log_dir, f"decoder-{os.getpid()}.log"), "a") as fh:
                        fh.write(f"{self.source}\t{text}\n")
                except OSError:
                    pass  # a log that cannot be written never fails a decode

    def first(self) -> str | None:
        """The message that best says what is wrong: one naming a cut file first, else the earliest."""
        for message in self.messages:
            if any(k in message.lower() for k in _TELLING):
                return message
        return self.messages[0] if self.messages else None

    def first_suffix(self) -> str:
        first = self.first()
        return f" (decoder: {first})" if first else ""

    def open_options(self) -> dict[str, str]:
        """Options every container is opened with: local files only."""
        from pipeline.video.paths import PROTOCOL_WHITELIST

        return {"protocol_whitelist": PROTOCOL_WHITELIST}


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
        decoder_log.free_closed()
