"""CLIP scores with a tiny random open_clip model built here (no weights are downloaded)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from filters.clip_scores import CaptionAgreement, ClipModel, ClipScores, build_aesthetic_head, caption_agreement
from pipeline.run_config import load_run_config
from pipeline.run_plan import resolve_plan
from filters.config import ClipFilterConfig
from pipeline.run import run_pipeline
from pipeline.core.stage import run_stage
from pipeline.video.stages import DecodeStage, ProbeStage
from pipeline.core.task import VideoTask
from shards.reader import open_run, read_index, read_rejects
from tests.conftest import pipeline_config
from tests.dense_caption.fake_llm import FakeLLM

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP: its config JSON, fixed weights saved as a state dict, and an aesthetic head."""
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    torch.save(model.state_dict(), root / "tiny-clip.pt")
    head = build_aesthetic_head(TINY["embed_dim"])
    from safetensors.torch import save_file

    save_file(head.state_dict(), str(root / "aesthetic.safetensors"))
    return {"arch": "tiny-clip", "arch_config": str(config), "weights": str(root / "tiny-clip.pt"),
            "aesthetic_head": str(root / "aesthetic.safetensors")}


@pytest.fixture(scope="module")
def decoded(video):
    cfg = load_run_config(None, ["input.path=.", "output.dir=.", "decode.isolate=false", "sampling.sets.0.num_frames=12",
                           "sampling.sets.0.stage_frames=[]"])
    decode = DecodeStage(cfg.sampling, cfg.decode)
    task = run_stage(ProbeStage(cfg.probe, cfg.limits), VideoTask("v", str(video("testsrc2_20s"))))
    return run_stage(decode, task)


def _cfg(tiny, **changes):
    return ClipFilterConfig(enabled=True, **tiny, **changes)


def test_embeddings_are_normalised_batched_and_deterministic(tiny_clip, decoded):
    jpegs = decoded.frames["shard"]
    one = ClipModel(_cfg(tiny_clip, batch_size=5)).encode_images(jpegs)
    two = ClipModel(_cfg(tiny_clip, batch_size=64)).encode_images(jpegs)
    assert one.shape == (12, 32) and np.allclose(np.linalg.norm(one, axis=1), 1, atol=1e-5)
    assert np.allclose(one, two, atol=1e-5)  # batching does not change the result; weights load from the file


def test_stage_writes_embedding_and_aesthetic_and_thresholds(tiny_clip, decoded):
    task = run_stage(ClipScores(_cfg(tiny_clip), "shard"), VideoTask("v", "s", dict(decoded.meta), dict(decoded.frames)))
    assert not task.rejected, task.error
    emb = np.array(task.meta["embedding"])
    assert emb.shape == (32,) and abs(np.linalg.norm(emb) - 1) < 1e-4
    aesthetic = task.meta["scores"]["aesthetic"]
    strict = ClipScores(_cfg(tiny_clip, min_aesthetic=aesthetic + 1), "shard")
    rejected = run_stage(strict, VideoTask("v", "s", dict(decoded.meta), dict(decoded.frames)))
    assert rejected.error.reason == "low_aesthetic" and "min_aesthetic" in rejected.error.detail
    kept = run_stage(ClipScores(_cfg(tiny_clip, min_aesthetic=aesthetic + 1, score_only=True), "shard"),
                     VideoTask("v", "s", dict(decoded.meta), dict(decoded.frames)))
    assert not kept.rejected and kept.meta["would_reject"][0].startswith("low_aesthetic")


def test_caption_agreement_uses_the_frames_inside_each_span(tiny_clip):
    frames = np.eye(4, dtype=np.float32)  # four orthogonal "frame embeddings" at t = 0, 10, 20, 30 s
    texts = {"a": frames[0], "b": frames[3]}
    captions = {"clips": [{"start_s": 0, "end_s": 10, "text": "a"}, {"start_s": 30, "end_s": 40, "text": "a"}],
                "video": {"text": "b"}}
    agree = caption_agreement(frames, [0, 10, 20, 30], captions, lambda ts: np.stack([texts[t] for t in ts]))
    assert agree[0] == pytest.approx(1.0) and agree[1] == pytest.approx(0.0) and agree[2] == pytest.approx(0.5)


def test_frame_text_threshold_rejects_a_mismatched_caption(tiny_clip, decoded):
    meta = dict(decoded.meta)
    meta["captions"] = {"clips": [{"start_s": 0, "end_s": 10, "text": "a test pattern"}], "video": {"text": "colour bars"}}
    task = run_stage(CaptionAgreement(_cfg(tiny_clip, min_frame_text=1.0), "shard"),
                     VideoTask("v", "s", meta, dict(decoded.frames)))
    assert task.error.reason == "caption_mismatch"
    scored = run_stage(CaptionAgreement(_cfg(tiny_clip), "shard"), VideoTask("v", "s", meta, dict(decoded.frames)))
    assert -1 <= scored.meta["scores"]["frame_text_min"] <= scored.meta["scores"]["frame_text_mean"] <= 1
    fresh = dict(decoded.meta, captions=meta["captions"])
    before = run_stage(ClipScores(_cfg(tiny_clip, min_frame_text=1.0), "shard"), VideoTask("v", "s", fresh, dict(decoded.frames)))
    assert not before.rejected and "frame_text_min" not in before.meta["scores"]  # the CLIP pass before captions


CAPTIONS = ("sampling.sets=[{name: shard, mode: uniform, num_frames: 8, resize: {size: 64}},"
            " {name: caption, mode: time_fps, fps: 1.0, resize: {policy: short_side, size: 64}}]")


def _caption_run(videos, out, url, tiny, *extra):
    # Half a CPU for each of the two CLIP pools (scores, then agreement after the captions): with the video pool's
    # one, every pool of the graph fits the test's 2-CPU Ray at once instead of waiting for the one before to end.
    clip = [f"filters.clip.{k}={v}" for k, v in tiny.items()] + ["filters.clip.enabled=true", "resources.clip.num_cpus=0.5"]
    llm = ["llm.enabled=true", "llm.model=fake", f"llm.http.url={url}", "llm.http.mode=external", "llm.qa.enabled=false",
           "llm.captions.text_pattern=null", "llm.retry.attempts=2", "llm.retry.backoff_s=0.05"]
    return run_pipeline(pipeline_config(videos, out, CAPTIONS, *clip, *llm, *extra))


@pytest.mark.timeout(1800)  # two whole runs with CLIP and captions: minutes on a busy 2-core machine
def test_caption_agreement_runs_after_the_captions_and_rejects_the_mismatch(tiny_clip, video, tmp_path, ray_local):
    """Through the graph: captions from the fake server, then CLIP agreement. A first run scores every video;
    a second, with the bar between the two scores, rejects the caption that agrees least with its frames."""
    cfg = pipeline_config(".", ".", "filters.clip.enabled=true", "llm.enabled=true", "llm.qa.enabled=false")
    names = [s.name for s in resolve_plan(cfg).stages]
    assert names.index("caption_agreement") > names.index("caption") > names.index("clip_scores")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("testsrc2_20s", "h264_10s"):
        shutil.copy(video(name), videos)
    with FakeLLM(deterministic=True) as fake:  # the same captions in both runs
        _caption_run(videos, tmp_path / "scored", fake.url, tiny_clip)
        scored = {r["key"]: r["score_frame_text_min"] for r in read_index(open_run(tmp_path / "scored"))}
        assert len(scored) == 2 and all(s is not None for s in scored.values()), scored
        (low_key, low), (_, high) = sorted(scored.items(), key=lambda kv: kv[1])
        assert low < high
        summary = _caption_run(videos, tmp_path / "gated", fake.url, tiny_clip,
                               f"filters.clip.min_frame_text={(low + high) / 2}")
    run = open_run(tmp_path / "gated")
    rejects = read_rejects(run)
    assert [(r["key"], r["stage"], r["reason"]) for r in rejects] == [(low_key, "caption_agreement", "caption_mismatch")]
    assert [r["key"] for r in read_index(run)] != [low_key] and summary.accepted == 1


def test_a_run_with_clip_writes_embeddings_parquet(tiny_clip, video, tmp_path, ray_local):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("testsrc2_20s", "h264_10s"):
        shutil.copy(video(name), videos)
    sets = [f"filters.clip.{k}={v}" for k, v in tiny_clip.items()] + ["filters.clip.enabled=true"]
    out = tmp_path / "out"
    run_pipeline(pipeline_config(videos, out, *sets))
    index = read_index(open_run(out))
    assert len(index) == 2 and all(r["score_aesthetic"] is not None for r in index) and "embedding" not in index[0]
    emb = pq.read_table(out / "embeddings.parquet").to_pylist()
    assert sorted(e["key"] for e in emb) == sorted(r["key"] for r in index) and len(emb[0]["embedding"]) == 32
