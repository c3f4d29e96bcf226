"""One interface to a served LLM, and the retry policy every caption and QA request goes through.

A backend makes one attempt (`chat`) and raises `LLMFailure` with a stable
reject reason; `complete` retries transport failures (429, 5xx, timeouts, a
server that went away) with backoff for up to `retry.transport_window_s`, and
bad output (bad JSON, schema violations, empty or endless text, a validator's
objection) up to `retry.attempts` times at a sampling temperature, so a
greedy model does not repeat the same bad answer. Model output is data: it is
parsed as JSON and checked against a schema, never evaluated or rendered.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import jsonschema

from dense_caption.config import RetryConfig
from pipeline.core.errors import Reason, VideoError


class LLMFailure(VideoError):
    """One failed request, the video's reject if retries do not mend it. `transport` failures are the server's
    fault and are retried on a clock."""

    def __init__(self, reason: Reason, detail: str, transport: bool = False):
        super().__init__(reason, detail)
        self.transport = transport

    def __reduce__(self):
        return (LLMFailure, (self.reason, self.detail, self.transport))


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    max_tokens: int
    schema: dict[str, Any] | None = None  # JSON schema the answer must follow (sent as response_format)
    name: str = "answer"  # names the schema for the server and the request in errors
    temperature: float = 0.0
    seed: int | None = None


@dataclass
class ChatResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    parsed: Any = None
    cached_tokens: int = 0  # prompt tokens the server took from its prefix cache (prompt_tokens_details)


@dataclass
class Usage:
    """Token and request accounting; one per video, summed into run.json's LLM totals."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the server's prefix cache, not prefilled
    retries: int = 0
    failures: int = 0  # requests that failed for good
    parts_asked_again: int = 0  # QA parts unusable in a batched answer, asked again in their own request
    seconds: float = 0.0  # wall time spent in requests (overlapping requests add up)
    first_at: float = 0.0  # epoch seconds of the first request sent and the last answer received:
    last_at: float = 0.0  # the window in which the LLM was working for these videos (tokens/s over it)
    peak_in_flight: int = 0  # most requests the worker's client had open at once
    by_reason: dict[str, int] = field(default_factory=dict)  # failed attempts per reason
    # per kind of request (the first word of its name: clip, summary, video, qa): requests and tokens, so the
    # token economy shows which prompts cost what
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, kind: str, result: "ChatResult") -> None:
        """One answered attempt's tokens, in the totals and under its kind."""
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.cached_prompt_tokens += result.cached_tokens
        mine = self.by_kind.setdefault(kind, {})
        for name, n in (("requests", 1), ("prompt_tokens", result.prompt_tokens),
                        ("cached_prompt_tokens", result.cached_tokens), ("completion_tokens", result.completion_tokens)):
            mine[name] = mine.get(name, 0) + n

    def window(self, first: float, last: float) -> None:
        if first:
            self.first_at = min(self.first_at or first, first)
        self.last_at = max(self.last_at, last)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


class ChatBackend(Protocol):
    """What the caption and QA stages need from a served model: one chat attempt."""

    async def chat(self, request: ChatRequest) -> ChatResult: ...

    async def close(self) -> None: ...


Validator = Callable[[Any], None]  # raises LLMFailure (not transport) when a parsed answer is unusable


def parse_answer(result: ChatResult, schema: dict[str, Any] | None) -> Any:
    """The answer as data: JSON checked against the schema, or the stripped text when no schema was asked for."""
    if result.finish_reason == "length":
        raise LLMFailure(Reason.LLM_TRUNCATED, f"output hit max_tokens ({result.completion_tokens} tokens)")
    text = result.text.strip()
    if not text:
        raise LLMFailure(Reason.LLM_EMPTY, "empty output")
    if schema is None:
        return text
    try:
        value = json.loads(text)  # strict: raw control characters inside strings are bad output too
    except json.JSONDecodeError as e:
        raise LLMFailure(Reason.LLM_BAD_JSON, f"{e.msg} at {e.pos}: {text[:120]!r}") from None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "answer"
        raise LLMFailure(Reason.LLM_SCHEMA, f"{where}: {e.message[:160]}") from None
    return value


async def complete(
    backend: ChatBackend,
    request: ChatRequest,
    retry: RetryConfig,
    usage: Usage,
    validate: Validator | None = None,
) -> Any:
    """Ask until a valid answer comes back or the retries run out (then raise the last LLMFailure)."""
    deadline = time.monotonic() + retry.transport_window_s
    content_failures = 0
    attempt = 0
    while True:
        current = request
        if content_failures and retry.retry_temperature > request.temperature:
            current = ChatRequest(**{**request.__dict__, "temperature": retry.retry_temperature, "seed": None})
        start = time.perf_counter()
        usage.requests += 1
        try:
            result = await backend.chat(current)
            usage.count(request.name.split(" ", 1)[0], result)
            value = parse_answer(result, request.schema)
            if validate is not None:
                validate(value)
            return value
        except LLMFailure as failure:
            usage.by_reason[failure.reason.value] = usage.by_reason.get(failure.reason.value, 0) + 1
            if failure.transport:
                give_up = time.monotonic() >= deadline
            else:
                content_failures += 1
                give_up = content_failures >= retry.attempts
            if give_up:
                usage.failures += 1
                raise
            usage.retries += 1
            attempt += 1
            if failure.transport:
                delay = min(retry.backoff_max_s, retry.backoff_s * 2 ** min(attempt - 1, 16))
                delay = min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(delay)
        finally:
            usage.seconds += time.perf_counter() - start
            usage.window(time.time() - (time.perf_counter() - start), time.time())


async def gather_settled(coros: list[Awaitable[Any]]) -> list[Any]:
    """Run concurrently; each result is the value or the LLMFailure it raised (other errors propagate)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, LLMFailure):
            raise r
    return results
