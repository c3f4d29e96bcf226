"""The stage contract, the decode cut-offs and the length / token-budget filters, without Ray."""

from __future__ import annotations

import pickle
import time

import pytest

from filters.length import LengthFilter
from filters.token_budget import TokenBudget
from pipeline.run_config import load_run_config
from filters.config import LengthFilterConfig, TokenBudgetConfig
from pipeline.core.errors import Reason, VideoError
from pipeline.core.stage import Stage, run_chain, run_stage
from pipeline.video.stages import DecodeStage, ProbeStage
from pipeline.core.task import VideoTask
from pipeline.run_plan import resolve_plan
from pipeline.video.watchdog import CallOverMemory, CallTimeout, WatchedProcess


class Exploding(Stage):
    name = "exploding"

    def process(self, task):
        raise RuntimeError("boom")


class Counting(Stage):
    name = "counting"

    def setup(self):
        self._setups = getattr(self, "_setups", 0) + 1

    def process(self, task):
        task.meta["seen"] = task.meta.get("seen", 0) + 1
        return task


def test_a_stage_that_raises_rejects_the_video_instead_of_stopping_the_run():
    task = run_stage(Exploding(), VideoTask("k", "/v.mp4"))
    assert (task.error.stage, task.error.reason, task.error.detail) == ("exploding", "internal_error", "RuntimeError: boom")
    after = run_stage(Counting(), task)
    assert "seen" not in after.meta  # rejected tasks pass later stages untouched
    assert set(after.metrics.seconds) == {"exploding"} and after.meta == {}  # measured beside the data


def test_setup_runs_once_per_worker_and_never_travels_with_the_stage():
    stage = Counting()
    for _ in range(3):
        run_stage(stage, VideoTask("k", "s"))
    assert stage._setups == 1
    clone = pickle.loads(pickle.dumps(stage))
    assert not hasattr(clone, "_setups") and clone._ready is False


class SlowSetup(Stage):
    name = "slow_setup"

    def setup(self):
        time.sleep(0.5)

    def process(self, task):
        return task


def test_setup_seconds_are_kept_apart_from_the_per_video_seconds():
    """`plan` scales per-video seconds with the corpus; a worker's setup is paid once, so it must not be in them."""
    from pipeline.core.records import WriteTotals

    stage, totals = SlowSetup(), WriteTotals()
    tasks = [run_stage(stage, VideoTask(f"k{i}", "s")) for i in range(3)]
    assert tasks[0].metrics.setup_s["slow_setup"] >= 0.5 and all(not t.metrics.setup_s for t in tasks[1:])
    assert tasks[0].metrics.seconds["slow_setup"] < 0.5  # the video's own seconds: a no-op
    for t in tasks:
        totals.add_video(t.metrics, {}, 0.0)
    rates = totals.stage_rates()["slow_setup"]
    assert rates["videos"] == 3 and rates["setup_s"] >= 0.5
    assert rates["seconds"] == round(sum(t.metrics.seconds["slow_setup"] for t in tasks), 3)


def test_rows_round_trip_with_frames_as_jpeg_bytes():
    task = VideoTask("k", "s", {"a": 1}, {"shard": [b"\xff\xd8x", b"\xff\xd8y"]})
    row = run_chain([Counting()], task.to_row(["shard", "caption"]), ["shard", "caption"])
    assert row["frames_shard"] == [b"\xff\xd8x", b"\xff\xd8y"] and row["frames_caption"] == []
    back = VideoTask.from_row(row)
    assert back.meta["seen"] == 1 and back.frames["shard"][1] == b"\xff\xd8y" and back.error is None
    assert set(back.metrics.seconds) == {"counting"} and back.metrics.started_at > 0  # its own column, not meta


def test_video_error_keeps_its_reason_across_processes():
    err = pickle.loads(pickle.dumps(VideoError(Reason.TRUNCATED, "cut")))
    assert err.reason is Reason.TRUNCATED and err.detail == "cut"


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def _allocate(mb):
    blob = bytearray(mb * 1024 * 1024)
    time.sleep(5)
    return len(blob)


def test_watched_process_cuts_off_hangs_and_blowups_and_restarts():
    child = WatchedProcess()
    assert child.call(_sleep, 0.01, timeout_s=30, max_rss_mb=4096) == 0.01
    with pytest.raises(CallTimeout, match="limit 0.3s"):
        child.call(_sleep, 60, timeout_s=0.3, max_rss_mb=4096)
    with pytest.raises(CallOverMemory, match="limit"):
        child.call(_allocate, 600, timeout_s=60, max_rss_mb=400)
    with pytest.raises(ZeroDivisionError):
        child.call(divmod, 1, 0, timeout_s=30, max_rss_mb=4096)  # the function's own error comes back as is
    assert child.call(_sleep, 0, timeout_s=30, max_rss_mb=4096) == 0  # a fresh child after each kill
    child.stop()


def _probed(video_path, *sets):
    """The probe of a run's plan on one video; the plan and the task."""
    plan = resolve_plan(load_run_config(None, ["input.path=.", "output.dir=.", *sets]))
    task = run_stage(ProbeStage(plan.probe, plan.cfg.limits), VideoTask("k", str(video_path)))
    assert not task.rejected
    return plan, task


def test_decode_stage_rejects_a_decode_that_hangs_or_balloons(video):
    for setting, reason in [("decode.timeout_s=0.001", "decode_timeout"), ("decode.max_memory_mb=1", "decode_memory")]:
        plan, task = _probed(video("h264_10s"), setting)
        stage = DecodeStage(plan.cfg.sampling, plan.decode)
        out = run_stage(stage, task)
        assert out.error.reason == reason and out.error.stage == "decode", out.error
        stage.teardown()


def test_decode_stage_uses_the_reserved_cpus_and_a_per_video_frame_count(video):
    plan, task = _probed(video("h264_10s"))
    task.meta["num_frames"] = 20  # a manifest's per-video frame count
    stage = DecodeStage(plan.cfg.sampling, plan.decode)
    assert plan.cfg.decode.threads == 0 and plan.decode.threads == 1  # the stage's num_cpus, never all of the node
    out = run_stage(stage, task)
    stage.teardown()
    assert len(out.frames["shard"]) == 20 and out.frames["shard"][0][:2] == b"\xff\xd8"
    assert out.meta["decode"]["sets"]["shard"]["num_frames"] == 20


def _task(duration=150.0, frames=4500, convs=None, stored=192):
    meta = {"video": {"duration_s": duration, "num_frames": frames}, "conversations": convs or []}
    return VideoTask("k", "s", meta, {"shard": [b"j"] * stored})


def test_length_filter_buckets():
    stage = LengthFilter(LengthFilterConfig(min_duration_s=120, max_duration_s=300, max_frames=9000))
    assert not run_stage(stage, _task()).rejected
    assert run_stage(stage, _task(duration=60)).error.reason == "too_short"
    assert run_stage(stage, _task(duration=400)).error.reason == "outside_duration_bucket"
    assert run_stage(stage, _task(frames=9001)).error.reason == "too_many_frames"


def test_token_budget_counts_frames_and_text_per_stage():
    conv = [{"id": "a", "conversations": [{"from": "human", "value": "x" * 400}, {"from": "gpt", "value": "y" * 40}]}]
    cfg = TokenBudgetConfig()
    task = run_stage(TokenBudget(cfg), _task(convs=conv))
    text = 100 + 5 + 10 + 5  # 4 characters a token plus Qwen markup per turn
    assert task.meta["tokens"] == {"text": text, "stage1": 32 * 156 + text, "stage2": 128 * 156 + text, "stage3": 192 * 156 + text}
    few = run_stage(TokenBudget(cfg), _task(stored=50))  # the trainer repeats frames: still 128
    assert few.meta["tokens"]["stage2"] == 128 * 156
    own = _task(stored=50)
    own.meta["num_frames"] = 50  # the sample names its own count: every stage feeds that many
    assert run_stage(TokenBudget(cfg), own).meta["tokens"]["stage2"] == 50 * 156
    tight = cfg.model_copy(update={"stages": [s.model_copy(update={"max_tokens": 1000}) for s in cfg.stages]})
    assert run_stage(TokenBudget(tight), _task()).error.reason == "token_budget"
    any_over = tight.model_copy(update={"drop": "any_over", "stages": [tight.stages[0], cfg.stages[2]]})
    assert run_stage(TokenBudget(any_over), _task()).error.reason == "token_budget"
    none_fit = any_over.model_copy(update={"drop": "none_fit"})
    assert not run_stage(TokenBudget(none_fit), _task()).rejected


def test_a_run_takes_keyframe_spacing_from_the_decoders_index_not_a_probe_scan(video):
    plan, task = _probed(video("clock_10s"))  # keyint 50 at 30 fps
    assert task.meta["video"]["keyframe_interval_s"] is None  # the plan's probe skips its own scan
    assert plan.cfg.probe.keyframe_scan_s > 0 and plan.probe.keyframe_scan_s == 0  # the config stays the user's
    stage = DecodeStage(plan.cfg.sampling, plan.decode)
    out = run_stage(stage, task)
    stage.teardown()
    assert out.error is None, out.error
    assert out.meta["video"]["keyframe_interval_s"] == pytest.approx(50 / 30, rel=0.01)
    assert "keyframe_interval_s" not in out.meta["decode"]  # recorded once, with the video's facts
