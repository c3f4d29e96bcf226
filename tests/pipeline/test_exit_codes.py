"""The CLI's exit codes come from one table, and the README's table says the same."""

from __future__ import annotations

import errno
import re
from pathlib import Path

from dense_caption.http_backend import ServerUnavailable
from pipeline.cli import DISK_FULL, EXIT_CODES, exit_code, main
from pipeline.core.config_load import ConfigError
from pipeline.core.sample import NewerFormat
from pipeline.run import RunLocked
from pipeline.video.probe import ToolMissing
from shards.reader import NotARunDir

ROOT = Path(__file__).resolve().parents[2]


def test_each_error_class_has_its_code_and_one_line():
    assert exit_code(ConfigError("input.path: no such file")) == (2, "input.path: no such file")
    assert exit_code(NotARunDir("x is not a run"))[0] == 2
    assert exit_code(NewerFormat("format 3.0"))[0] == 2
    assert exit_code(ToolMissing("ffprobe"))[0] == 3
    assert exit_code(RunLocked("held by pid 1")) == (4, "error: held by pid 1")
    assert exit_code(ServerUnavailable("down"))[0] == 5
    assert exit_code(RuntimeError("a bug")) is None  # raised, with its traceback


def test_a_full_disk_behind_a_wrapped_error_is_exit_6():
    inner = OSError(errno.ENOSPC, "No space left on device", "/out/shards/x.tar")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("a Ray task failed") from e
    except RuntimeError as outer:
        code, line = exit_code(outer)
    assert code == DISK_FULL == 6 and "writing /out/shards/x.tar" in line
    assert exit_code(RuntimeError("task died: [Errno 28] No space left on device"))[0] == 6


def test_main_prints_the_line_and_returns_the_code(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_the_readme_table_lists_every_code():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("Exit codes (one table"):]
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", section[: section.index("\n\n", section.index("| code |"))], re.M))
    assert sorted(int(c) for c in rows) == sorted({0, 1, DISK_FULL} | {code for _, code, _ in EXIT_CODES})
