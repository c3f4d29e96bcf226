"""Session fixtures: synthetic videos made once per test session into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.config import RunConfig, load_config  # noqa: E402
from pipeline.synth import CATALOGUE, can_encode, make_bad_file, make_video  # noqa: E402


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def video(video_dir):
    """`video("h264_10s")` -> path of that catalogue video, generated on first use."""

    def get(name: str) -> Path:
        spec = CATALOGUE[name]
        if not can_encode(spec.codec):
            pytest.skip(f"local ffmpeg cannot encode {spec.codec}")
        return make_video(spec, video_dir)

    return get


@pytest.fixture(scope="session")
def bad_file(video_dir):
    """`bad_file("truncated")` -> path of that broken input, generated on first use."""
    return lambda kind: make_bad_file(kind, video_dir / "bad")


@pytest.fixture
def run_config(tmp_path) -> RunConfig:
    """The demo config pointed at a temporary output folder."""
    root = Path(__file__).resolve().parents[1]
    return load_config(root / "configs" / "demo.yaml", [f"output.dir={tmp_path / 'out'}", f"input.path={tmp_path}"])
