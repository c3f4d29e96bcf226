"""OpenAI-compatible chat completions over HTTP (a vLLM server), async with a bounded number of requests in flight.

The number in flight is what keeps a vLLM server's continuous batching full:
each LLM worker holds up to `llm.http.max_concurrency` requests open, across
all the videos it has in hand. The API key is read from the environment
variable the config names and only ever goes into the Authorization header.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from typing import Any

import aiohttp

from dense_caption.client import ChatRequest, ChatResult, LLMFailure
from dense_caption.config import HttpBackendConfig
from pipeline.core.errors import Reason


class ServerUnavailable(RuntimeError):
    """The configured LLM server cannot be used at all: the run refuses before it touches anything."""


def api_key(cfg: HttpBackendConfig) -> str | None:
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ServerUnavailable(f"llm.http.api_key_env names {cfg.api_key_env}, which is not set in the environment")
    return key


def check_server(url: str, model: str, cfg: HttpBackendConfig) -> list[str]:
    """Preflight from the driver: the server answers `GET /models` and serves `model`. Returns the served names."""
    req = urllib.request.Request(url.rstrip("/") + "/models")
    key = api_key(cfg)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=cfg.connect_timeout_s + 20) as r:
            body = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise ServerUnavailable(f"LLM server at {url} answered GET /models with HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        reason = getattr(e, "reason", e)
        raise ServerUnavailable(f"LLM server at {url} is not reachable ({reason}); start it or fix llm.http.url") from None
    served = [str(m.get("id")) for m in body.get("data", []) if isinstance(m, dict)]
    if model not in served:
        raise ServerUnavailable(f"LLM server at {url} does not serve model {model!r} (it serves {served}); fix llm.model")
    return served


class HttpChatBackend:
    """One aiohttp session per worker process; `peak_in_flight` records the most requests open at once."""

    def __init__(self, url: str, model: str, cfg: HttpBackendConfig, key: str | None = None):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.cfg = cfg
        self._key = key or api_key(cfg)
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self.in_flight = 0
        self.peak_in_flight = 0

    def _open(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._slots is None:
            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s, sock_connect=self.cfg.connect_timeout_s)
            connector = aiohttp.TCPConnector(limit=self.cfg.max_concurrency)
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector)
            self._slots = asyncio.Semaphore(self.cfg.max_concurrency)
        return self._session, self._slots

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.name, "schema": request.schema, "strict": True},
            }
        return body

    async def chat(self, request: ChatRequest) -> ChatResult:
        session, slots = self._open()
        if self.cfg.record_requests:
            with open(self.cfg.record_requests, "a") as f:  # one line per request; the event loop is one thread
                f.write(json.dumps(self.payload(request)) + "\n")
        async with slots:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                return await self._post(session, request)
            finally:
                self.in_flight -= 1

    async def _post(self, session: aiohttp.ClientSession, request: ChatRequest) -> ChatResult:
        try:
            async with session.post(self.endpoint, json=self.payload(request)) as r:
                raw = await r.read()
                if r.status != 200:
                    detail = f"HTTP {r.status} for {request.name}: {raw[:200].decode('utf-8', 'replace')}"
                    # 429 and 5xx are the server's trouble; 4xx (a prompt too long, a bad schema) will not heal
                    raise LLMFailure(Reason.LLM_HTTP_ERROR, detail, transport=r.status == 429 or r.status >= 500)
        except asyncio.TimeoutError:
            raise LLMFailure(Reason.LLM_TIMEOUT, f"{request.name}: no answer within {self.cfg.timeout_s:g}s", True) from None
        except aiohttp.ClientError as e:  # refused, reset, disconnected mid-answer
            raise LLMFailure(Reason.LLM_UNAVAILABLE, f"{request.name}: {type(e).__name__}: {e}", True) from None
        return parse_envelope(raw, request.name)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_envelope(raw: bytes, name: str) -> ChatResult:
    """The OpenAI response around the answer; a broken envelope is the server's fault (retried as transport)."""
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
        usage = body.get("usage") or {}
        return ChatResult(
            text=str(text),
            finish_reason=str(choice.get("finish_reason") or ""),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        )
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise LLMFailure(Reason.LLM_HTTP_ERROR, f"{name}: malformed response body {raw[:120]!r}", True) from None
