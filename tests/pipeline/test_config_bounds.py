"""Every number of the run config is of its type, finite and in range at load: a value that would fail every video
(or be quietly coerced) exits 2 with one line naming the key, its value and the bound, before anything is made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config_load import ConfigError

from pipeline.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
BASE = ["input.path=videos", "output.dir=out", "llm.enabled=false"]

# (override, the key its error line names, what the line says). configs/demo.yaml: set 0 is `shard`, 1 `caption`.
REFUSED = [
    ("sampling.sets.0.num_frames=1.0e+23", "sampling.sets.0.num_frames", "at most 16384 (got 1e+23)"),
    ("sampling.sets.1.fps=.inf", "sampling.sets.1.fps", "finite number above 0 and at most 1000 (got inf)"),
    ("sampling.sets.1.fps=1e300", "sampling.sets.1.fps", "above 0 and at most 1000 (got 1e+300)"),
    ("probe.timeout_s=.inf", "probe.timeout_s", "finite number above 0 and at most 86400 (got inf)"),
    ("decode.threads=1000000", "decode.threads", f"from 0 to {max(4 * (os.cpu_count() or 1), 256)}: 4x the"),
    ("sampling.sets.0.stage_frames=[100000000]", "sampling.sets.0.stage_frames.0", "at most 16384 (got 100000000)"),
    ("input.extensions=[]", "input.extensions", "at least 1 item"),
    # no coercion: a bool, a string or a float is no frame count
    ("sampling.sets.0.num_frames=true", "sampling.sets.0.num_frames", "valid integer (got True)"),
    ('sampling.sets.0.num_frames="8"', "sampling.sets.0.num_frames", "valid integer (got '8')"),
    ("sampling.sets.0.num_frames=8.0", "sampling.sets.0.num_frames", "valid integer (got 8.0)"),
]


@pytest.mark.parametrize("override, key, says", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_value_out_of_bounds_exits_2_naming_the_key_before_anything_is_made(tmp_path, override, key, says):
    videos = tmp_path / "videos"
    videos.mkdir()
    planted = videos / "keep.mp4"
    planted.write_bytes(b"\x00\x00\x00\x18ftypmp42 a user's bytes")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(ROOT / "configs/demo.yaml"), "--set", override,
         "--set", "llm.enabled=false", "--set", f"input.path={videos}", "--set", "input.format=auto",
         "--set", f"output.dir={out}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("invalid config") and len(lines) == 2, done.stderr  # the heading and one error
    assert lines[1].startswith(f"  {key}: ") and says in lines[1], lines[1]
    assert f"[from --set {override}]" in lines[1]
    assert not out.exists()
    assert planted.read_bytes() == b"\x00\x00\x00\x18ftypmp42 a user's bytes"


@pytest.mark.parametrize("override, key, says", [
    ("sampling.sets.0.num_frames=2000", "sampling.sets.0.num_frames", "from 1 to 1024 (input.max_frames_per_sample)"),
    ("input.max_frames_per_sample=100", "sampling.sets.0.num_frames", "from 1 to 100 (input.max_frames_per_sample)"),
    ("sampling.sets.1.max_frames=5000", "sampling.sets.1.max_frames", "from 1 to 1024"),
    ("input.max_frames_per_sample=100000", "input.max_frames_per_sample", "above 0 and at most 16384"),
    ("input.extensions=[mp4]", "input.extensions.0", "should match pattern"),
    ("input.extensions=[.tar.gz]", "input.extensions.0", "should match pattern"),
    ("decode.timeout_s=86401", "decode.timeout_s", "above 0 and at most 86400"),
    ("decode.max_memory_mb=.nan", "decode.max_memory_mb", "finite number"),
    ("limits.max_duration_s=1e9", "limits.max_duration_s", "at most 604800"),
    ("limits.min_width=8000", "limits", "min_width (8000) exceeds max_width (7680)"),
    ("shards.max_bytes=1e12", "shards.max_bytes", "valid integer"),
    ("filters.visual.min_brightness=300", "filters.visual.min_brightness", "from 0 to 255"),
    ("filters.clip.min_frame_text=2", "filters.clip.min_frame_text", "from -1 to 1"),
    ("resources.video.num_cpus=.inf", "resources.video.num_cpus", "finite number from 0 to 1024"),
    ("ray.num_cpus=100000", "ray.num_cpus", "4x the"),
    ("ray.object_store_mb=10", "ray.object_store_mb", "greater than or equal to 75"),
    ("llm.http.timeout_s=1e400", "llm.http.timeout_s", "finite number"),
    ("llm.retry.attempts=false", "llm.retry.attempts", "valid integer"),
    ("llm.captions.clip_s=.inf", "llm.captions.clip_s", "finite number"),
    ("llm.seed=-1", "llm.seed", "greater than or equal to 0"),
    ("llm.http.managed.startup_timeout_s=1e6", "llm.http.managed.startup_timeout_s", "at most 86400"),
])
def test_every_section_bounds_its_numbers(override, key, says):
    with pytest.raises(ConfigError) as err:
        load_run_config(ROOT / "configs/demo.yaml", BASE + [override])
    line = next(x for x in str(err.value).splitlines() if x.startswith(f"  {key}: "))
    assert says in line, line


def test_a_yaml_config_with_ints_for_floats_still_loads(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "input: {path: videos, extensions: [.mp4, .WMV]}\noutput: {dir: out}\nprobe: {timeout_s: 30}\n"
        "decode: {timeout_s: 900, frame_count_tolerance: 0}\nlimits: {max_duration_s: 3600}\n"
        "sampling:\n  sets:\n    - {name: shard, mode: uniform, num_frames: 32}\n"
        "    - {name: caption, mode: time_fps, fps: 2, resize: {policy: short_side, size: 224}}\n"
        "filters: {visual: {black_level: 20, min_sharpness: 0}, length: {min_duration_s: 1, max_duration_s: 600}}\n"
        "resources: {video: {num_cpus: 1}}\nllm: {temperature: 0, retry: {backoff_s: 1}}\n"
    )
    cfg = load_run_config(f, ["sampling.sets.0.min_distinct=1", "shards.eval_fraction=0", "decode.threads=2"])
    floats = [cfg.probe.timeout_s, cfg.decode.timeout_s, cfg.sampling.sets[1].fps, cfg.filters.visual.black_level,
              cfg.resources.video.num_cpus, cfg.llm.temperature, cfg.sampling.sets[0].min_distinct]
    assert floats == [30, 900, 2, 20, 1, 0, 1] and all(type(x) is float for x in floats)
    assert cfg.decode.threads == 2 and cfg.input.extensions == [".mp4", ".WMV"]


def test_yaml_12_numbers_are_numbers():
    """`1e-1` is a float in YAML 1.2 (PyYAML's 1.1 rules make it a string, which a number field now refuses)."""
    cfg = load_run_config(None, BASE + ["sampling.sets.1.fps=5e-1", "probe.timeout_s=3E1"])
    assert cfg.sampling.sets[1].fps == 0.5 and cfg.probe.timeout_s == 30.0


def test_the_default_extensions_are_suffixes():
    exts = load_run_config(None, BASE).input.extensions
    assert len(exts) == len(set(exts)) and all(e.startswith(".") and e == e.lower() for e in exts)
    assert {".wmv", ".asf", ".3gp", ".mpg", ".mpeg", ".m2ts", ".mts", ".vob", ".m2v", ".divx", ".f4v"} <= set(exts)
