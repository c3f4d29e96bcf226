"""The HTTP backend and retry policy against the fault-injecting fake server (no Ray, no vLLM)."""

from __future__ import annotations

import asyncio

import pytest

from dense_caption.captions import caption_schema, frames_in, windows
from dense_caption.client import ChatRequest, LLMFailure, Usage, complete
from dense_caption.config import HttpBackendConfig, RetryConfig
from dense_caption.http_backend import HttpChatBackend, ServerUnavailable, check_server
from dense_caption.qa import check_pair, qa_schema, times_in_text
from filters.text import is_refusal, near_duplicates
from pipeline.core.errors import Reason
from tests.dense_caption.fake_llm import FakeLLM

FAST = RetryConfig(attempts=2, transport_window_s=2.0, backoff_s=0.02, backoff_max_s=0.1)


def ask(fake: FakeLLM, retry: RetryConfig = FAST, timeout_s: float = 5.0, n: int = 1, concurrency: int = 4):
    async def go():
        backend = HttpChatBackend(fake.url, "fake", HttpBackendConfig(timeout_s=timeout_s, max_concurrency=concurrency))
        usage = Usage()
        request = ChatRequest([{"role": "user", "content": "hi"}], 32, caption_schema(100, None), "clip [00:00-00:10]")
        try:
            results = await asyncio.gather(*[complete(backend, request, retry, usage) for _ in range(n)], return_exceptions=True)
        finally:
            await backend.close()
        return results, usage, backend

    return asyncio.run(go())


def test_good_answer_counts_tokens():
    with FakeLLM() as fake:
        (answer,), usage, _ = ask(fake)
    assert set(answer) == {"caption"} and answer["caption"].startswith("clip [00:00-00:10]")
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.retries) == (1, 100, 10, 0)
    sent = fake.requests[0]["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"]["required"] == ["caption"]


@pytest.mark.parametrize("fault", ["http_500", "http_429", "bad_envelope", "drop"])
def test_transient_faults_are_retried(fault):
    with FakeLLM(lambda n, body: fault if n < 2 else None) as fake:
        (answer,), usage, _ = ask(fake)
    assert "caption" in answer
    assert usage.retries == 2 and usage.failures == 0 and usage.requests == 3


@pytest.mark.parametrize(
    "fault,reason",
    [("malformed", Reason.LLM_BAD_JSON), ("endless", Reason.LLM_TRUNCATED), ("schema", Reason.LLM_SCHEMA),
     ("empty", Reason.LLM_EMPTY), ("http_500", Reason.LLM_HTTP_ERROR)],
)  # fmt: skip
def test_persistent_faults_end_with_their_reason(fault, reason):
    with FakeLLM(lambda n, body: fault) as fake:
        (failure,), usage, _ = ask(fake)
    assert isinstance(failure, LLMFailure) and failure.reason is reason
    assert usage.failures == 1
    if reason is not Reason.LLM_HTTP_ERROR:  # bad output: exactly `attempts` tries, the retry resampled
        assert usage.requests == FAST.attempts
        assert fake.requests[1]["temperature"] == FAST.retry_temperature


def test_timeouts_retry_then_fail():
    with FakeLLM(lambda n, body: "hang") as fake:
        (failure,), usage, _ = ask(fake, RetryConfig(attempts=2, transport_window_s=0.5, backoff_s=0.01), timeout_s=0.3)
    assert failure.reason is Reason.LLM_TIMEOUT and usage.requests >= 2


def test_server_gone_is_unavailable():
    fake = FakeLLM()  # never started: connection refused
    (failure,), usage, _ = ask(fake, RetryConfig(transport_window_s=0.3, backoff_s=0.05))
    assert failure.reason is Reason.LLM_UNAVAILABLE and failure.transport


def test_concurrency_is_bounded_and_reached():
    with FakeLLM(delay_s=0.2) as fake:
        results, usage, backend = ask(fake, n=12, concurrency=3)
    assert all(isinstance(r, dict) for r in results)
    assert fake.peak_in_flight == 3 and backend.peak_in_flight == 3


def test_preflight_names_the_problem(monkeypatch):
    with FakeLLM(model="served") as fake:
        assert check_server(fake.url, "served", HttpBackendConfig()) == ["served"]
        with pytest.raises(ServerUnavailable, match="does not serve model 'other'"):
            check_server(fake.url, "other", HttpBackendConfig())
        monkeypatch.delenv("PROLONGVID_TEST_KEY", raising=False)
        with pytest.raises(ServerUnavailable, match="PROLONGVID_TEST_KEY"):
            check_server(fake.url, "served", HttpBackendConfig(api_key_env="PROLONGVID_TEST_KEY"))
    with pytest.raises(ServerUnavailable, match="not reachable"):
        check_server(fake.url, "served", HttpBackendConfig(connect_timeout_s=1))


def test_windows_tile_the_video():
    assert windows(25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert windows(21, 10) == [(0, 10), (10, 21)]  # a 1 s sliver joins the clip before
    assert windows(7, 10) == [(0, 7)]
    for duration in (1.5, 9.99, 10, 30.2, 301):
        spans = windows(duration, 10)
        assert spans[0][0] == 0 and spans[-1][1] == pytest.approx(duration)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_frames_in_window():
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert frames_in(times, 0, 3, False, 10) == [0, 1, 2]
    assert frames_in(times, 3, 5, True, 10) == [3, 4, 5]
    assert frames_in(times, 0, 6, True, 2) == [0, 5]
    assert frames_in([0.0, 20.0], 8, 12, False, 4) == [0]  # no frame inside: the nearest one


def test_qa_validation_and_text_filters():
    schema = qa_schema("multiple_choice", 60, 200, None)
    assert schema["properties"]["start_s"]["maximum"] == 60 and schema["properties"]["answer"]["enum"] == ["A", "B", "C", "D"]
    ok = {"status": "ok", "question": "What happens at 00:30?", "answer": "A man waves.", "start_s": 25, "end_s": 35}
    check_pair(ok, "open", 60, ["does not specify"])
    for bad, reason in [
        ({**ok, "answer": "The video does not specify."}, Reason.LLM_INVALID),
        ({**ok, "question": "What happens at 02:30?"}, Reason.LLM_INVALID),
        ({**ok, "start_s": 40, "end_s": 30}, Reason.LLM_INVALID),
        ({**ok, "answer": "  "}, Reason.LLM_EMPTY),
    ]:
        with pytest.raises(LLMFailure) as e:
            check_pair(bad, "open", 60, ["does not specify"])
        assert e.value.reason is reason
    with pytest.raises(LLMFailure, match="distinct"):
        check_pair({**ok, "answer": "A", "options": ["x", "y", "x", "z"]}, "multiple_choice", 60, [])
    check_pair({**ok, "status": "decline", "question": ""}, "open", 60, [])  # a decline needs nothing else
    assert times_in_text("from 01:05 to 1:02:03") == [65, 3723]
    assert is_refusal("It does not mention a dog. But...", ["does not mention"])
    assert not is_refusal("A dog runs. It does not show fear.", ["does not show"])
    kept, dropped = near_duplicates(["What colour is the car?", "What colour is the car", "How many people walk?"], 0.8)
    assert kept == [0, 2] and dropped == [1]
