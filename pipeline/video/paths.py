"""What a path on disk is, before anything opens it: one place that names every way an entry cannot be a video."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pipeline.core.errors import Reason, VideoError

# Demuxers that open other files or URLs named inside the input (a concat list, a playlist, an image pattern,
# a session description): a file of this kind under a video name would pull in data from anywhere.
INDIRECT_FORMATS = frozenset({"concat", "hls", "applehttp", "dash", "image2", "sdp", "rtsp", "rtp", "tee", "lavfi", "mpd"})
# Every ffmpeg-based reader opens inputs through these protocols only: no network, no pipes, no subfile tricks.
PROTOCOL_WHITELIST = "file"


def indirect_format(format_name: str) -> str | None:
    """The first demuxer name in `format_name` (ffprobe's comma list) that pulls in other inputs, or None."""
    return next((n for n in format_name.split(",") if n in INDIRECT_FORMATS), None)


def check_path_text(path: str) -> None:
    """A path must be text that can be stored (UTF-8) and passed to the OS (no NUL)."""
    if "\x00" in path:
        raise VideoError(Reason.BAD_PATH, f"path contains a NUL byte: {path!r}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise VideoError(Reason.BAD_PATH, f"path is not valid UTF-8: {path!r}") from None


def os_error(text: str, e: OSError) -> VideoError:
    """An OSError from stat or open of `text` as the specific reason."""
    if e.errno == errno.ELOOP:
        return VideoError(Reason.SYMLINK_LOOP, f"{text}: symbolic links loop and never reach a file")
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        dangling = os.path.islink(text)
        return VideoError(Reason.MISSING, f"{text} {'is a dangling symbolic link' if dangling else 'does not exist'}")
    if e.errno in (errno.EACCES, errno.EPERM):
        return VideoError(Reason.UNREADABLE, f"{text}: permission denied")
    if e.errno == errno.ENAMETOOLONG:
        return VideoError(Reason.BAD_PATH, f"path too long: {text[:120]}...")
    if e.errno == errno.ENXIO:  # a socket (or a device with nothing behind it) cannot be opened as a file
        return VideoError(Reason.NOT_REGULAR_FILE, f"{text} is not a regular file")
    return VideoError(Reason.UNREADABLE, f"{text}: {e.strerror or e}")


def check_stat_regular(text: str, st: os.stat_result) -> None:
    """VideoError naming what `st` is when it is not a regular file."""
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a regular file")
        raise VideoError(Reason.NOT_REGULAR_FILE, f"{text} is {kind}")


def check_regular_file(path: str | Path) -> os.stat_result:
    """The stat of `path` (symlinks followed) when it is a regular file; VideoError with the specific reason if not."""
    text = str(path)
    check_path_text(text)
    try:
        st = os.stat(text)
    except OSError as e:
        raise os_error(text, e) from None
    check_stat_regular(text, st)
    return st
