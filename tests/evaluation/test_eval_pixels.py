"""`prolongvid eval` on a video file sees the pixels training saw: one generated video, run through the pipeline
with the shipped defaults (configs/default.yaml) and read by the training loader, and decoded by eval's own path
(`decoded_frames`, a default FrameSetConfig, then `Evaluator.pixels`), gives equal tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import webdataset as wds

from evaluation.questions import Question, decoded_frames
from evaluation.runner import Evaluator
from fixtures.tiny_train_model import build_tokenizer
from pipeline.run import run_pipeline
from pipeline.run_config import load_run_config
from train.chat import ChatEncoder
from train.data import DataConfig, shard_urls, training_items

ROOT = Path(__file__).resolve().parents[2]
TURNS = [{"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "Bars move."}]


@pytest.fixture(scope="module")
def trained_on(tmp_path_factory, video, ray_local):
    """(the source video, a run over it with the default sampling sets)."""
    root = tmp_path_factory.mktemp("eval_pixels")
    (root / "v").mkdir()
    source = Path(shutil.copy(video("h264_10s_noaudio"), root / "v" / "clip.mp4"))
    (root / "ann.json").write_text(json.dumps([{"id": "clip", "video": "v/clip.mp4", "conversations": TURNS}]))
    out = root / "out"
    cfg = load_run_config(ROOT / "configs" / "default.yaml", [
        f"input.path={root / 'ann.json'}", "input.format=llava", f"input.video_root={root}", f"output.dir={out}",
        "ray.progress=false", "filters.visual.enabled=false"])
    summary = run_pipeline(cfg)
    assert summary.accepted == 1
    return source, out


@pytest.mark.parametrize("k", [32, 128])
def test_eval_on_the_video_file_sees_the_tensors_training_saw(trained_on, k):
    source, run = trained_on
    data = DataConfig(shards=str(run), frames=k, shuffle_buffer=0)
    samples = wds.WebDataset(shard_urls(str(run)), shardshuffle=False, empty_check=False)
    (item,) = training_items(iter(samples), data, ChatEncoder(build_tokenizer()), tokens_per_frame=1)
    question = Question(qid="q", prompt="<image>\nWhat happens?", options=[], answer="A", duration="short",
                        task_type="", qa_type="", frames=decoded_frames(source))
    seen = Evaluator.pixels(SimpleNamespace(data=data), question)
    assert seen.shape == item["pixel_values"].shape == (k, 3, data.image_size, data.image_size)
    assert torch.equal(seen, item["pixel_values"])
