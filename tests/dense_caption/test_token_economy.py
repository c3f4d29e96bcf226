"""LLM token accounting: prompt tokens the server's prefix cache served, and tokens per video-minute."""

from __future__ import annotations

import json

from dense_caption.http_backend import parse_envelope
from pipeline.core.records import VideoMetrics, WriteTotals


def test_cached_prompt_tokens_are_read_from_the_response():
    body = {"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 768}}}
    result = parse_envelope(json.dumps(body).encode(), "qa")
    assert (result.prompt_tokens, result.cached_tokens, result.completion_tokens) == (900, 768, 40)
    plain = parse_envelope(json.dumps({**body, "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode(), "qa")
    assert plain.cached_tokens == 0  # a server that does not report it: nothing counted as cached


def test_run_totals_give_tokens_per_video_minute_and_the_cache_hit_rate():
    totals = [WriteTotals(), WriteTotals()]
    totals[0].add_video(VideoMetrics({"caption": 2.0}), {"requests": 10, "prompt_tokens": 6000, "completion_tokens": 600,
                                           "cached_prompt_tokens": 2000, "first_at": 100.0, "last_at": 110.0}, 60.0)
    totals[1].add_video(VideoMetrics({"caption": 1.0}), {"requests": 5, "prompt_tokens": 3000, "completion_tokens": 300,
                                           "cached_prompt_tokens": 1000, "first_at": 105.0, "last_at": 130.0}, 120.0)
    totals[1].add_video(VideoMetrics({"decode": 1.0}), {}, 600.0)  # no LLM use: its minutes do not count
    run = WriteTotals()
    for part in totals:
        run.add(part)
    llm = run.llm_summary(wall_s=60.0)
    assert llm["video_minutes"] == 3.0 and llm["prefilled_prompt_tokens"] == 6000
    assert llm["prompt_tokens_per_video_minute"] == 3000.0 and llm["prefilled_tokens_per_video_minute"] == 2000.0
    assert llm["completion_tokens_per_video_minute"] == 300.0 and llm["prefix_cache_hit_rate"] == round(3000 / 9000, 4)
    assert llm["active_s"] == 30.0 and llm["tokens_per_s"] == round(9900 / 30, 1)


def test_tokens_are_counted_per_kind_of_request_and_summed_across_videos():
    """One merge: a video's caption and QA usage into its `meta.llm`, and every video's into the run's."""
    from dense_caption.client import ChatResult, Usage
    from dense_caption.stages import add_usage
    from pipeline.core.task import VideoTask

    usage, other = Usage(), Usage()
    usage.count("clip", ChatResult("{}", "stop", prompt_tokens=700, completion_tokens=50, cached_tokens=100))
    usage.count("qa", ChatResult("{}", "stop", prompt_tokens=900, completion_tokens=40, cached_tokens=800))
    other.count("qa", ChatResult("{}", "stop", prompt_tokens=900, completion_tokens=60, cached_tokens=0))
    usage.requests, usage.first_at, usage.last_at = 2, 5.0, 6.0
    other.requests, other.first_at, other.last_at = 1, 4.0, 9.0
    task = VideoTask("k", "s")
    add_usage(task, usage)
    add_usage(task, other)
    video = task.meta["llm"]
    assert video["by_kind"]["qa"] == {"requests": 2, "prompt_tokens": 1800, "cached_prompt_tokens": 800,
                                      "completion_tokens": 100}
    assert (video["prompt_tokens"], video["cached_prompt_tokens"]) == (2500, 900)
    assert (video["first_at"], video["last_at"]) == (4.0, 9.0)  # the video's LLM window
    assert task.meta["counts"] == {"llm_requests": 3, "llm_prompt_tokens": 2500, "llm_completion_tokens": 150}
    totals = WriteTotals()
    totals.add_video(VideoMetrics(), video, 30.0)
    totals.add_video(VideoMetrics(), other.to_dict(), 30.0)
    by_kind = totals.llm_summary(wall_s=1.0)["by_kind"]
    assert by_kind["qa"]["prompt_tokens"] == 2700 and by_kind["clip"]["requests"] == 1
    assert by_kind["qa"]["prefilled_tokens_per_video_minute"] == 1900.0  # (2700 - 800) over one video-minute
    assert "prefilled_tokens_per_video_minute" not in totals.llm["by_kind"]["qa"]  # the totals are left as they were
