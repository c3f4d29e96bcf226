"""Caption and QA stages inside real pipeline runs (Ray), against the fault-injecting fake server.

Each video has its own duration, and every prompt names it ("lasts 00:17"),
so the fake server can fail exactly one video's requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds

from dense_caption.config import QA_TYPES
from dense_caption.http_backend import ServerUnavailable
from fixtures.videos import SynthVideo, make_video
from pipeline.run import run_pipeline
from shards.layout import Sample
from shards.reader import open_run, read_index, read_rejects
from shards.verify import verify_run
from tests.conftest import pipeline_config
from tests.dense_caption.fake_llm import FakeLLM, text_of

DURATIONS = (12, 17, 23, 31)
SETS = (
    "sampling.sets=[{name: shard, mode: uniform, num_frames: 8, resize: {size: 64}},"
    " {name: caption, mode: time_fps, fps: 1.0, resize: {policy: short_side, size: 64}}]"
)


@pytest.fixture(scope="module")
def llm_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llm_videos")
    for d in DURATIONS:
        make_video(SynthVideo(f"clip_{d}s", duration_s=d, width=160, height=90, fps=10, audio=False), folder)
    return folder


def llm_config(videos: Path, out: Path, url: str, *extra: str):
    return pipeline_config(
        videos, out, SETS, "llm.enabled=true", "llm.model=fake", f"llm.http.url={url}",
        "llm.retry.attempts=2", "llm.retry.transport_window_s=20", "llm.retry.backoff_s=0.05",
        "llm.retry.backoff_max_s=0.5", "llm.http.timeout_s=2", "llm.videos_in_flight=4", "llm.http.mode=external",
        "llm.captions.text_pattern=null", "llm.qa.text_pattern=null", *extra,
    )  # fmt: skip


def test_faults_reject_only_their_videos_and_retry_rejects_redoes_them(llm_videos, ray_local, tmp_path):
    out = tmp_path / "out"
    faults = {17: "malformed", 23: "endless"}

    def fault(n, body):
        text = text_of(body)
        for seconds, kind in faults.items():
            if f"lasts 00:{seconds:02d}" in text:
                return kind
        return "http_500" if n % 5 == 0 else None  # every fifth request fails once more, on every video

    with FakeLLM(fault) as fake:
        summary = run_pipeline(llm_config(llm_videos, out, fake.url))
    run = open_run(out)
    rejects = {Path(r["source"]).stem: r for r in read_rejects(run)}
    assert sorted(rejects) == ["clip_17s", "clip_23s"], rejects
    assert rejects["clip_17s"]["reason"] == "llm_bad_json" and rejects["clip_17s"]["stage"] == "caption"
    assert rejects["clip_23s"]["reason"] == "llm_truncated"
    index = {Path(r["source"]).stem: r for r in read_index(run)}
    assert sorted(index) == ["clip_12s", "clip_31s"]
    for stem, row in index.items():
        duration = int(stem.split("_")[1][:-1])
        assert row["caption_clips"] == len([s for s in range(0, duration, 10) if s == 0 or duration - s >= 10 / 3])
        assert row["num_qa"] == len(QA_TYPES) + 2 and row["num_conversations"] == row["num_qa"]
        assert row["llm_prompt_tokens"] > 0 and row["llm_completion_tokens"] > 0
    assert summary.llm["retries"] > 0 and summary.llm["failures"] == 2
    totals = json.loads((out / "run.json").read_text())["this_run"]["llm"]
    assert totals["requests"] == len(fake.requests) and totals["tokens_per_s"] > 0
    assert verify_run(run) == []

    # The samples: caption levels with spans that tile the video, QA with types, LLaVA conversations.
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    for members in wds.WebDataset(urls, shardshuffle=False):
        sample = Sample(members)
        meta, conversations = sample.meta, sample.conversations
        usage = meta.llm  # every attempt that got an answer reported its tokens; the 500s reported none
        assert usage.prompt_tokens == 100 * (usage.requests - usage.retries) and usage.failures == 0
        clips = meta.captions.clips
        assert clips[0].start_s == 0 and clips[-1].end_s == pytest.approx(meta.video.duration_s, abs=1e-3)
        assert all(a.end_s == b.start_s for a, b in zip(clips, clips[1:]))
        assert all(c.span.startswith("[00:") and c.text for c in clips)
        assert meta.captions.video.text and meta.captions.segments
        assert {p.type for p in meta.qa.pairs} == set(QA_TYPES) | {"multiple_choice", "detailed_description"}
        generated = [c for c in conversations if c.qa_type]
        assert len(generated) == len(meta.qa.pairs)
        for conv in generated:
            turns = conv.turns()
            assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n") and turns[1]["from"] == "gpt"
            if conv.qa_type == "multiple_choice":
                assert turns[1]["value"] in "ABCD" and "\nD. " in turns[0]["value"]

    # The fault is fixed: `--retry-rejects 'llm_*'` redoes exactly the two LLM rejects.
    with FakeLLM() as fake:
        again = run_pipeline(llm_config(llm_videos, out, fake.url), retry_reasons=["llm_*"])
    assert again.accepted == 2 and again.skipped == 2 and not again.rejected
    assert sorted(Path(r["source"]).stem for r in read_index(open_run(out))) == [f"clip_{d}s" for d in DURATIONS]
    asked = [text_of(b) for b in fake.requests]
    assert asked and not any("lasts 00:12" in t or "lasts 00:31" in t for t in asked)


def test_server_dying_mid_run_loses_nothing(llm_videos, ray_local, tmp_path):
    out = tmp_path / "out"
    fake = FakeLLM().start()
    seen = {"n": 0}

    def die_once(n, body):
        if n == 12 and not seen["n"]:  # about half way: the run sends about 23 requests
            seen["n"] = 1
            import threading

            def bounce():
                fake.stop()
                import time

                time.sleep(2)
                fake.start()

            threading.Thread(target=bounce, daemon=True).start()
            return "hang"
        return None

    fake.fault = die_once
    try:
        summary = run_pipeline(llm_config(llm_videos, out, fake.url))
    finally:
        fake.stop()
    assert seen["n"] == 1 and summary.accepted == len(DURATIONS) and not summary.rejected
    assert summary.llm["retries"] >= 1
    assert verify_run(open_run(out)) == []


def test_requests_in_flight_follow_the_config(llm_videos, ray_local, tmp_path):
    """One request a QA part, so each video asks for more at once than the limit: the limit is reached, never
    passed (with batched parts a video may have fewer requests open than the limit, on a slow machine)."""
    with FakeLLM(delay_s=0.15) as fake:
        run_pipeline(llm_config(llm_videos, tmp_path / "out", fake.url, "llm.http.max_concurrency=3",
                                "llm.qa.types=[count, binary]", "llm.qa.parts_per_request=1"))  # fmt: skip
    assert fake.peak_in_flight == 3


def test_unreachable_server_refuses_before_touching_the_output(llm_videos, tmp_path):
    out = tmp_path / "out"
    dead = FakeLLM()  # its port is free: nothing listens
    with pytest.raises(ServerUnavailable, match="not reachable"):
        run_pipeline(llm_config(llm_videos, out, dead.url))
    assert not out.exists()
