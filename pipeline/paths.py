"""What a path on disk is, before anything opens it: one place that names every way an entry cannot be a video."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pipeline.errors import Reason, VideoError

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


def check_regular_file(path: str | Path) -> os.stat_result:
    """The stat of `path` (symlinks followed) when it is a regular file; VideoError with the specific reason if not."""
    text = str(path)
    check_path_text(text)
    try:
        st = os.stat(text)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VideoError(Reason.SYMLINK_LOOP, f"{text}: symbolic links loop and never reach a file") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            dangling = os.path.islink(text)
            raise VideoError(Reason.MISSING, f"{text} {'is a dangling symbolic link' if dangling else 'does not exist'}") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise VideoError(Reason.UNREADABLE, f"{text}: permission denied") from None
        if e.errno == errno.ENAMETOOLONG:
            raise VideoError(Reason.BAD_PATH, f"path too long: {text[:120]}...") from None
        raise VideoError(Reason.UNREADABLE, f"{text}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a regular file")
        raise VideoError(Reason.NOT_REGULAR_FILE, f"{text} is {kind}")
    return st


def check_readable(path: str | Path) -> os.stat_result:
    """`check_regular_file`, then one byte read: permissions and I/O errors show here, not inside a decoder."""
    st = check_regular_file(path)
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as e:
        raise VideoError(Reason.UNREADABLE, f"{path}: {e.strerror or e}") from None
    return st
