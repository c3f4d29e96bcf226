"""Session fixtures: synthetic videos made once per test session into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["PROLONGVID_STRICT_META"] = "1"  # every product stage's writes are checked against pipeline/core/meta.py

from fixtures.videos import CATALOGUE, can_encode, make_bad_file, make_video  # noqa: E402
from pipeline.run_config import RunConfig, load_run_config


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
    return load_run_config(root / "configs" / "demo.yaml", [f"output.dir={tmp_path / 'out'}", f"input.path={tmp_path}", "input.format=auto", "llm.enabled=false"])


GOOD_MIX = ["h264_10s", "hevc_10s", "theora_10s", "vfr_10s", "rotated_10s"]
BAD_REASONS = {  # bad fixture kind -> the reject reason it must end with
    "zero_byte": "empty_file",
    "truncated": "truncated",
    "truncated_index": "truncated",
    "random_bytes": "not_media",
    "audio_only": "no_video_stream",
    "png_as_mp4": "still_image",
    "unknown_codec": "unsupported_codec",
}


@pytest.fixture(scope="session")
def mixed_dir(tmp_path_factory, video_dir) -> Path:
    """Good catalogue videos mixed with every bad fixture in one folder (a realistic input folder)."""
    import shutil

    folder = tmp_path_factory.mktemp("mixed")
    for name in GOOD_MIX:
        if can_encode(CATALOGUE[name].codec):
            src = make_video(CATALOGUE[name], video_dir)
            shutil.copy(src, folder / src.name)
    for kind in BAD_REASONS:
        src = make_bad_file(kind, video_dir / "bad")
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the in-process pipeline runs of the session (short temp path: socket limits)."""
    import tempfile

    import ray

    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    from pipeline.ray_local import start_local_ray

    start_local_ray(dict(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False))  # loopback, a token
    yield
    ray.shutdown()


def pipeline_config(input_path, out_dir, *sets: str) -> RunConfig:
    """The demo config pointed at `input_path` / `out_dir`, small shards, no progress bars, no held-out split
    (a test that wants one sets `shards.eval_fraction`)."""
    root = Path(__file__).resolve().parents[1]
    base = [f"input.path={input_path}", "input.format=auto", f"output.dir={out_dir}", "shards.max_samples=2",
            "ray.progress=false", "llm.enabled=false", "shards.eval_fraction=0"]
    return load_run_config(root / "configs" / "demo.yaml", base + list(sets))
