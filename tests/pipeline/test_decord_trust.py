"""Only the decord build proven exact decodes, and it stays exact when its decoder thread waits for a CPU.

decord2 3.4 gave up a skip after 10000 polls of its decoder thread and
returned the frame it held, without an error: with two CPU hogs beside it,
10 of 1440 frames of a long H.264 file were up to 250 positions early.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fixtures import framecode
from fixtures.codec_corpus import CORPUS, make_coded
from pipeline.core.config_load import ConfigError
from pipeline.run_config import load_run_config
from pipeline.video.decode_decord import DecordBackend
from pipeline.video.decord_build import decord_problem

BASE = ["input.path=videos", "output.dir=out"]


def _installed(monkeypatch, dists: dict[str, str]) -> None:
    def version(name: str) -> str:
        if name in dists:
            return dists[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


@pytest.mark.parametrize("dists, says", [
    ({"decord2": "3.4.0"}, "decord2 3.4.0 is installed"),
    ({"decord2": "3.4.0", "decord": "0.6.0"}, "pip uninstall decord2"),
    ({}, "decord is not installed: pip install 'prolongvid[decord]'"),
    ({"decord": "0.5.2"}, "decord 0.5.2 is installed; only 0.6.0 is proven exact"),
])
def test_an_untrusted_or_missing_decord_fails_the_config_naming_the_field(monkeypatch, dists, says):
    _installed(monkeypatch, dists)
    assert says in decord_problem()
    with pytest.raises(ConfigError) as err:
        load_run_config(None, BASE + ["decode.backend=decord"])
    assert "decode.backend" in str(err.value) and says in str(err.value)
    assert load_run_config(None, BASE + ["decode.backend=pyav"]).decode.backend == "pyav"  # PyAV needs no decord


def test_the_installed_decord_is_the_trusted_one():
    assert decord_problem() is None, decord_problem()


def _wrong_frames(path: str, codes: np.ndarray, seed: int, rounds: int) -> list[tuple]:
    """Fresh readers, 48 random positions each (as a pipeline's decode worker reads a span): every frame checked."""
    rng = np.random.default_rng(seed)
    wrong = []
    for _ in range(rounds):
        backend = DecordBackend(path, display_size=(128, 72))
        try:
            for frame in backend.read(np.sort(rng.choice(len(codes), 48, replace=False))):
                shown = framecode.read(frame.rgb(128, 72, "area"))
                if shown is None or shown[0] != codes[frame.index]:
                    wrong.append((frame.index, int(codes[frame.index]), shown))
        finally:
            backend.close()
    return wrong


def test_decord_stays_exact_while_cpu_hogs_starve_its_decoder_thread(tmp_path):
    """Two decode workers on a 30-minute H.264 (a keyframe in 250), a busy process on every CPU and one more."""
    case = CORPUS["h264_long_30min"]
    path = str(make_coded(case, tmp_path))
    codes, _ = case.expected()
    workers, rounds = 2, 15
    cpus = min(len(os.sched_getaffinity(0)), 16)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus + 1)]
    try:
        with ThreadPoolExecutor(workers) as pool:
            wrong = [w for ws in pool.map(lambda seed: _wrong_frames(path, codes, seed, rounds), range(workers))
                     for w in ws]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert not wrong, f"{len(wrong)} of {workers * rounds * 48} frames wrong, first: {wrong[:5]}"
