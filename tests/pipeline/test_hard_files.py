"""Files a real corpus holds and no tidy fixture does: cut, degenerate, odd entries, and what the console shows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from filters.visual import first_failure, visual_scores
from fixtures.codec_corpus import CORPUS, CodedVideo, make_coded
from fixtures.videos import SynthVideo, make_video
from pipeline.run_config import load_run_config
from pipeline.video.config_video import DecodeConfig, ProbeConfig, SamplingConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.video.extract import extract_frames
from pipeline.video.probe import probe_video
from pipeline.video.sources import load_sources
from tests.pipeline.identity import read_jpeg

ROOT = Path(__file__).resolve().parents[2]
X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-bf", "2")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hard")
    return lambda case: make_coded(case, folder)


def cut(path: Path, fraction: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def test_a_file_cut_in_half_is_truncated_at_probe_and_at_decode(files, tmp_path):
    half = cut(files(CORPUS["hevc_mkv"]), 0.5, tmp_path / "half.mkv")  # 20 s declared, about 10 s left
    with pytest.raises(VideoError) as err:
        probe_video(half)
    assert err.value.reason is Reason.TRUNCATED and "20.00s" in err.value.detail
    info = probe_video(half, ProbeConfig(check_tail=False))  # the decoder's own check, without the probe's
    assert info.duration_s == pytest.approx(20.0, abs=0.05)
    with pytest.raises(VideoError) as err:
        extract_frames(info, SamplingConfig(), DecodeConfig(isolate=False))
    assert err.value.reason is Reason.TRUNCATED
    # kept on request: with the span that really decodes, never the declared one
    result = extract_frames(info, SamplingConfig(), DecodeConfig(isolate=False, truncated="keep"))
    assert result.declared_duration_s == pytest.approx(20.0, abs=0.05)
    assert 8.0 < result.duration_s < 11.0 and result.num_frames < 330
    shard = result.sets["shard"]
    codes = [read_jpeg(j)[0] for j in shard.jpegs]
    assert codes == shard.indices and max(shard.timestamps_s) < result.duration_s


def test_a_truncated_faststart_file_is_truncated_at_probe(bad_file):
    with pytest.raises(VideoError) as err:
        probe_video(bad_file("truncated"))
    assert err.value.reason is Reason.TRUNCATED and "partial file" in err.value.detail


def test_one_frame_and_half_a_second_are_rejected_not_repeated(files):
    one = files(CodedVideo("one_frame", "mp4", X264, frames=1))
    with pytest.raises(VideoError) as err:
        extract_frames(probe_video(one), SamplingConfig(), DecodeConfig(isolate=False))
    assert err.value.reason is Reason.SINGLE_FRAME
    short = files(CodedVideo("half_second", "mp4", X264, frames=15))
    info = probe_video(short)
    with pytest.raises(VideoError) as err:
        extract_frames(info, SamplingConfig(), DecodeConfig(isolate=False))
    assert err.value.reason is Reason.TOO_FEW_DISTINCT_FRAMES and "15 distinct of 192" in err.value.detail
    relaxed = load_run_config(None, ["input.path=.", "output.dir=.", "sampling.sets.0.min_distinct=0"]).sampling
    kept = extract_frames(info, relaxed, DecodeConfig(isolate=False)).sets["shard"]
    # every stage's frames stored once each (15), each stage's 192 / 128 / 32 picks repeating them
    assert len(kept) == 15 and [len(kept.stages[k]) for k in ("32", "128", "192")] == [32, 128, 192]
    assert [kept.indices[p] for p in kept.stages["192"]] == np.linspace(0, 14, 192, dtype=int).tolist()


def test_every_folder_entry_is_accounted_for(files, tmp_path):
    good = files(CORPUS["h264_gop12"])
    (tmp_path / "a.mp4").write_bytes(good.read_bytes())
    (tmp_path / "x.mp4").mkdir()
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    os.symlink("nowhere.mp4", tmp_path / "dangling.mp4")
    os.mkfifo(tmp_path / "pipe.mkv")
    (tmp_path / "song.m4a").write_bytes(b"not a video by name")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    os.symlink("..", tmp_path / "sub" / "up")  # a folder loop: walked once
    (tmp_path / os.fsdecode(b"bad\xff.mp4")).write_bytes(good.read_bytes())
    sources = load_sources(load_run_config(None, [f"input.path={tmp_path}", "output.dir=unused"]).input)
    assert [t.source for t in sources.tasks] == [str(tmp_path / "a.mp4")]
    reasons = {Path(r.source).name: r.reason for r in sources.rejects}
    assert reasons == {"x.mp4": "not_regular_file", "loop.mp4": "symlink_loop", "dangling.mp4": "missing",
                       "pipe.mkv": "not_regular_file", "bad\\xff.mp4": "bad_path"}
    assert sources.skipped_by_extension == 2 and sources.skipped_suffixes == {".m4a": 1, ".txt": 1}


def test_probe_names_what_it_sees(tmp_path, files):
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    with pytest.raises(VideoError) as err:
        probe_video(tmp_path / "loop.mp4")
    assert err.value.reason is Reason.SYMLINK_LOOP
    song = tmp_path / "song.mp3"  # audio with cover art: a video stream that is a still image
    cover = tmp_path / "cover.png"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=red:s=64x64", "-frames:v", "1", str(cover)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=2", "-i", str(cover), "-map", "0", "-map", "1",
                    "-c:a", "libmp3lame", "-c:v", "png", "-disposition:v", "attached_pic", str(song)], check=True)
    with pytest.raises(VideoError) as err:
        probe_video(song)
    assert err.value.reason is Reason.NO_VIDEO_STREAM and "cover art" in err.value.detail


@pytest.mark.parametrize("name", ["testsrc2_20s", "blurred_20s", "slideshow_40s", "still_60s", "tiny_64"])
def test_filters_see_the_same_frames_whatever_the_backend(video, video_dir, name):
    path = make_video(SynthVideo("tiny_64", width=64, height=64, audio=False), video_dir) if name == "tiny_64" else video(name)
    cfg = load_run_config(ROOT / "configs" / "default.yaml", ["input.path=.", "output.dir=."])
    info = probe_video(path)
    scores, verdicts = {}, {}
    for backend in ("pyav", "decord"):
        result = extract_frames(info, cfg.sampling, cfg.decode.model_copy(update={"backend": backend, "isolate": False}))
        assert result.decoder == backend
        scores[backend] = visual_scores(result.sets["caption"].jpegs, cfg.filters.visual)
        verdicts[backend] = first_failure(scores[backend], cfg.filters.visual, info.duration_s)
    a, b = scores["pyav"].as_dict(), scores["decord"].as_dict()
    assert getattr(verdicts["pyav"], "reason", None) == getattr(verdicts["decord"], "reason", None), (a, b)
    for field in ("brightness", "sharpness", "motion", "blank_ratio"):
        assert a[field] == pytest.approx(b[field], rel=0.1, abs=0.5), (field, a, b)


def test_a_run_console_shows_the_summary_not_decoder_chatter(bad_file, video, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for src in (bad_file("truncated"), bad_file("truncated_index"), video("h264_10s")):
        (folder / Path(src).name).write_bytes(Path(src).read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ray_temp = tempfile.mkdtemp(prefix="rayq", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(ROOT / "configs" / "demo.yaml"), "--set", f"input.path={folder}",
         "--set", "input.format=auto", "--set", f"output.dir={tmp_path / 'out'}", "--set", "llm.enabled=false",
         "--set", "ray.num_cpus=2", "--set", f"ray.temp_dir={ray_temp}", "--set", "probe.check_tail=false"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    shutil.rmtree(ray_temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    console = done.stdout + done.stderr
    assert "rejected: truncated" in console and "accepted" in console
    for chatter in ("@ 0x", "Invalid NAL", "partial file", "Token authentication", "Progress bars disabled"):
        assert chatter not in console, chatter
