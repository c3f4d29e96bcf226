"""`export-llava` read back the way the ProLongVid paper's trainer reads annotations.

`trainer_reads` restates, in our words, the video branch of `LazySupervisedDataset._get_item`
(ruiwang2021/ProLongVid, llava/train/train.py) and `process_video_with_decord` (llava/utils.py): the joined
`video_folder` + `video` path, the "shareVideoGPTV" rule for a folder of frames (files listed, sorted by name,
`linspace(0, n-1, max(n, 64))` of them unless a frame count is given, frame i stated at i/2 s), and decord for
anything else (every round(fps / video_fps)-th frame, or the record's / the arguments' frame count). Where it
raises, the trainer would silently train on the next record instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from pipeline.run import run_pipeline
from pipeline.video.locate import key_for_path
from shards.layout import Sample
from shards.llava import FRAMES_FOLDER, export_llava, summary_path
from shards.reader import iter_tar_samples, open_run, read_index, shard_urls
from shards.split import EVAL, TRAIN, split_of
from tests.conftest import pipeline_config
from tests.train.synth import write_run

ROOT = Path(__file__).resolve().parents[2]
EVAL_FRACTION = 0.3
VIDEOS = {"h264_10s": ".mp4", "halves_10s": ".mp4", "clock_10s": ".mp4", "theora_10s": ".ogv"}
HELD_OUT = "clock_10s"  # its key's hash falls below 0.3: the run's one eval video
UNDECODABLE = "theora_10s"  # decord cannot index Ogg (fixtures/videos.py); the run decodes it with PyAV


@dataclass(frozen=True)
class TrainerArgs:
    """The trainer's DataArguments that choose frames (its defaults)."""

    video_fps: float = 1.0
    frames_upbound: int = 0
    frames_lowerbound: int = 0
    fixed_num_frames: int = 0


STAGE2 = TrainerArgs(video_fps=0.5, frames_upbound=128, fixed_num_frames=128)  # scripts/train/train_stage2.sh


def _bounded(total: int, default: list[int], args: TrainerArgs, own: int = 0) -> list[int]:
    """The trainer's frame-count rules, in its order: the record's own count (videos only), fixed, then bounds."""
    count = own or args.fixed_num_frames
    if not count and args.frames_upbound > 0 and len(default) > args.frames_upbound:
        count = args.frames_upbound
    elif not count and args.frames_lowerbound > 0 and len(default) < args.frames_lowerbound:
        count = args.frames_lowerbound
    return np.linspace(0, total - 1, count, dtype=int).tolist() if count else default


def trainer_reads(record: dict, video_folder: str, args: TrainerArgs = TrainerArgs()) -> tuple[list, list[float]]:
    """(frames, the times the trainer states for them) as `_get_item` reads `record`; raises where it fails."""
    path = os.path.join(video_folder, record["video"])
    if "shareVideoGPTV" in path:
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        total = len(files)
        picks = _bounded(total, np.linspace(0, total - 1, max(total, 64), dtype=int).tolist(), args)
        frames = []
        for i in picks:
            with Image.open(files[i]) as img:
                frames.append(img.convert("RGB"))
        return frames, [i / 2 for i in picks]
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total, fps = len(reader), reader.get_avg_fps()
    picks = _bounded(total, list(range(0, total, round(fps / args.video_fps))), args, record.get("num_frames") or 0)
    return list(reader.get_batch(picks).asnumpy()), [i / fps for i in picks]


def _turns(q: str, a: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]


@pytest.fixture(scope="module")
def run(tmp_path_factory, video, ray_local):
    """An imported LLaVA dataset (videos in one root, annotations elsewhere), one video held out for eval."""
    base = tmp_path_factory.mktemp("llava_export")
    videos = base / "videos"
    (videos / "clips").mkdir(parents=True)
    records = []
    for name, ext in VIDEOS.items():
        shutil.copy(video(name), videos / "clips" / f"{name}{ext}")
        records.append({"id": f"{name}-0", "video": f"clips/{name}{ext}", "conversations": _turns("What?", name)})
    records.append({"id": "h264_10s-1", "video": "clips/h264_10s.mp4", "conversations": _turns("Again?", "yes"),
                    "data_source": "demo"})
    (base / "ann").mkdir()
    (base / "ann" / "ann.json").write_text(json.dumps(records))
    out = base / "run"
    run_pipeline(pipeline_config(base / "ann" / "ann.json", out, "input.format=llava", f"input.video_root={videos}",
                                 f"shards.eval_fraction={EVAL_FRACTION}", "sampling.sets.0.num_frames=16",
                                 "sampling.sets.0.stage_frames=[8,16]", "sampling.sets.0.resize.size=64",
                                 "filters.visual.enabled=false", "filters.length.min_duration_s=0"))  # fmt: skip
    splits = {r["key"]: r["split"] for r in read_index(open_run(out))}
    assert splits == {key_for_path(f"clips/{n}{e}"): EVAL if n == HELD_OUT else TRAIN for n, e in VIDEOS.items()}
    assert all(split_of(k, EVAL_FRACTION) == s for k, s in splits.items())
    return out, videos.resolve()


def _ids(records: list[dict]) -> set[str]:
    return {r["id"] for r in records}


def _train_ids() -> set[str]:
    return {f"{n}-0" for n in VIDEOS if n != HELD_OUT} | {"h264_10s-1"}


def test_the_plain_export_is_read_by_the_papers_trainer_and_names_its_video_root(run, tmp_path):
    out, videos = run
    summary = export_llava(out, tmp_path / "ann.json")
    records = json.loads((tmp_path / "ann.json").read_text())
    assert _ids(records) == _train_ids() and summary.records == 4 and summary.samples == 3
    assert summary.left_out == {EVAL: 1}  # the held-out video is not in training data
    assert summary.video_root == str(videos) and summary.video_root_from == "samples"
    assert {r["video"] for r in records} == {f"clips/{n}{e}" for n, e in VIDEOS.items() if n != HELD_OUT}
    assert next(r for r in records if r["id"] == "h264_10s-1")["data_source"] == "demo"
    on_disk = json.loads(summary_path(tmp_path / "ann.json").read_text())
    assert on_disk["video_root"] == str(videos) and on_disk["split"] == TRAIN
    # decord cannot open the Ogg source: flagged, and indeed the trainer cannot read that record
    assert summary.decord.startswith("checked 3 sources with decord")
    assert [(u.video, u.key) for u in summary.unreadable] == [
        (str(videos / "clips" / f"{UNDECODABLE}.ogv"), key_for_path(f"clips/{UNDECODABLE}.ogv"))]
    assert "DECORDError" in summary.unreadable[0].error
    for record in records:
        if record["video"].startswith(f"clips/{UNDECODABLE}"):
            with pytest.raises(decord.DECORDError):
                trainer_reads(record, summary.video_root)
            continue
        for args in (TrainerArgs(), STAGE2):
            frames, times = trainer_reads(record, summary.video_root, args)
            assert len(frames) == (10 if args == TrainerArgs() else 128) and frames[0].shape[-1] == 3
            assert times[-1] <= 10.0


def test_absolute_paths_are_read_whatever_the_video_folder(run, tmp_path):
    out, videos = run
    summary = export_llava(out, tmp_path / "abs.json", absolute=True, check_decord=False)
    records = json.loads((tmp_path / "abs.json").read_text())
    assert summary.absolute_records == len(records) == 4 and all(os.path.isabs(r["video"]) for r in records)
    assert summary.decord.startswith("not checked") and not summary.unreadable
    for record in records:
        if UNDECODABLE not in record["video"]:
            assert trainer_reads(record, str(tmp_path / "elsewhere"))[0]


def test_the_frames_export_is_read_as_frames_every_record_included(run, tmp_path):
    out, _ = run
    frames_dir = tmp_path / "frames"
    summary = export_llava(out, tmp_path / "frames.json", frames_dir=frames_dir)
    records = json.loads((tmp_path / "frames.json").read_text())
    assert _ids(records) == _train_ids() and summary.video_root == str(frames_dir.resolve())
    assert summary.frames_written == 3 * 16 and summary.decord.startswith("not needed") and not summary.unreadable
    assert 1.5 < summary.frames_fps_min <= summary.frames_fps_max < 1.7  # 16 frames over 10 s, not the 2 it assumes
    stored = {key: Sample(members, key) for url in shard_urls(open_run(out)) for key, members in iter_tar_samples(url)}
    for record in records:
        key = record["video"].split("/")[-1]
        assert record["video"] == f"{FRAMES_FOLDER}/{key}"
        frames, times = trainer_reads(record, summary.video_root)
        assert len(frames) == 64 and times[-1] == 7.5  # 16 files stretched to 64; file 15 "at" 15/2 s
        assert len(trainer_reads(record, summary.video_root, STAGE2)[0]) == 128
        sample = stored[key]  # the files, in the trainer's name order, are the largest stage's frames in time order
        positions = sample.meta.stored_set().stage(16).positions
        assert sample.num_frames > 16 and len(positions) == 16
        files = sorted((frames_dir / FRAMES_FOLDER / key).iterdir())
        assert [f.read_bytes() for f in files] == sample.frames(positions)
    again = export_llava(out, tmp_path / "abs.json", frames_dir=frames_dir, absolute=True)  # rewrites, no leftovers
    for record in json.loads((tmp_path / "abs.json").read_text()):
        assert record["video"].startswith(str(frames_dir.resolve())) and FRAMES_FOLDER in record["video"]
        assert len(trainer_reads(record, "/")[0]) == 64
    assert again.frames_written == 3 * 16 and not again.skipped


def test_the_eval_split_is_exported_only_when_asked(run, tmp_path):
    out, _ = run
    held = export_llava(out, tmp_path / "eval.json", split=EVAL)
    records = json.loads((tmp_path / "eval.json").read_text())
    assert _ids(records) == {f"{HELD_OUT}-0"} and held.left_out == {TRAIN: 3} and not held.unreadable
    assert trainer_reads(records[0], held.video_root)[0]
    both = export_llava(out, tmp_path / "all.json", frames_dir=tmp_path / "f", split="all")
    assert _ids(json.loads((tmp_path / "all.json").read_text())) == _train_ids() | {f"{HELD_OUT}-0"}
    assert both.left_out == {} and both.samples == 4
    with pytest.raises(ValueError, match="split"):
        export_llava(out, tmp_path / "x.json", split="test")


@pytest.mark.parametrize("layout1", [False, True])
def test_a_video_path_the_trainer_would_take_for_a_frames_folder_is_flagged(tmp_path, video, layout1):
    root = tmp_path / "shareVideoGPTV_mirror"  # a video root whose name the trainer's frames rule matches
    root.mkdir()
    shutil.copy(video("h264_10s"), root / "a.mp4")
    run = write_run(tmp_path / "run", samples=1, per_shard=1, frames=6, layout1=layout1,
                    meta_of=lambda s: {"key": "video000", "source": str(root / "a.mp4"), "video_rel": "a.mp4"})
    summary = export_llava(run, tmp_path / "ann.json")
    assert summary.video_root == str(root) and summary.read_as_frames == [str(root / "a.mp4")]
    assert not summary.unreadable  # decord itself opens it: only the trainer's path rule goes wrong
    (record,) = json.loads((tmp_path / "ann.json").read_text())
    assert record["video"] == "a.mp4"
    with pytest.raises(NotADirectoryError):
        trainer_reads(record, summary.video_root)
    frames = export_llava(run, tmp_path / "frames.json", frames_dir=tmp_path / "frames")
    (record,) = json.loads((tmp_path / "frames.json").read_text())
    assert frames.frames_written == 6 and len(trainer_reads(record, frames.video_root)[0]) == 64


def test_without_decord_the_summary_says_so_instead_of_guessing(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` raises ImportError
    summary = export_llava(run[0], tmp_path / "ann.json")
    assert summary.decord.startswith("not installed") and summary.unreadable == []


def test_the_command_line(run, tmp_path):
    out, videos = run

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "export-llava", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)  # fmt: skip

    done = cli(str(out), str(tmp_path / "ann.json"), "--split", "all")
    assert done.returncode == 0, done.stderr
    assert f"--video_folder {videos}" in done.stdout and "UNREADABLE" in done.stdout and "theora_10s" in done.stdout
    assert str(summary_path(tmp_path / "ann.json")) in done.stdout
    for bad in ([str(tmp_path), str(tmp_path / "x.json")], [str(out), str(tmp_path / "x.json"), "--split", "test"]):
        done = cli(*bad)
        assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.strip(), done.stderr
    assert len(cli(str(tmp_path), str(tmp_path / "x.json")).stderr.strip().splitlines()) == 1
