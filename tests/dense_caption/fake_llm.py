"""A small OpenAI-compatible server that injects faults: 500s, timeouts, malformed and endless JSON, dying.

It is for fault tests only; the real-server tests use vLLM. Good answers are
built from the request's JSON schema (first enum value, minimum integers,
distinct strings naming the request), so they validate. `fault(n, body)`
chooses per request: None for a good answer, or one of the FAULTS.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import socket
import threading
from typing import Any, Callable

from aiohttp import web

FAULTS = ("http_500", "http_429", "hang", "malformed", "endless", "schema", "empty", "bad_envelope", "drop")


def value_for(schema: dict[str, Any], label: str, counter: itertools.count) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: value_for(v, f"{label} {k}", counter) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [value_for(schema["items"], f"{label} item{i}", counter) for i in range(schema.get("minItems", 1))]
    if kind == "integer":
        return schema.get("minimum", 0)
    return f"{label} {next(counter)}"


def text_of(body: dict[str, Any]) -> str:
    parts = []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(parts)


class FakeLLM:
    def __init__(self, fault: Callable[[int, dict[str, Any]], str | None] | None = None, delay_s: float = 0.0,
                 model: str = "fake", host: str = "127.0.0.1", port: int = 0, deterministic: bool = False):  # fmt: skip
        self.fault = fault or (lambda n, body: None)
        self.host = host
        self.deterministic = deterministic  # answers from the request alone, not the order: runs compare byte for byte
        self.delay_s = delay_s
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._counter = itertools.count()
        self._n = itertools.count()
        if not port:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://{host}:{self.port}/v1"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- handlers
    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = next(self._n)
        self.requests.append(body)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await self._answer(request, n, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, n: int, body: dict[str, Any]) -> web.StreamResponse:
        fault = self.fault(n, body)
        if fault == "http_500":
            return web.json_response({"error": "injected"}, status=500)
        if fault == "http_429":
            return web.json_response({"error": "slow down"}, status=429)
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "bad_envelope":
            return web.Response(text="{not json", content_type="application/json")
        if fault == "drop":  # the connection dies mid-answer
            request.transport.close()
            return web.Response(status=500)
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
        name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "answer")
        finish = "stop"
        if fault == "malformed":
            content = '{"caption": "unterminated'
        elif fault == "endless":
            content, finish = '{"caption": "' + "very " * 200, "length"
        elif fault == "schema":
            content = json.dumps({"unexpected": 1})
        elif fault == "empty":
            content = ""
        else:
            counter = self._counter
            if self.deterministic:
                counter = itertools.count(int(hashlib.sha256(text_of(body).encode()).hexdigest()[:8], 16))
            content = json.dumps(value_for(schema, name, counter) if schema else f"{name} answer")
        return web.json_response({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
        })  # fmt: skip

    # ------------------------------------------------------------- life cycle
    def start(self) -> "FakeLLM":
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_site())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _start_site(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve until killed: the chaos tests run it as a process of its own, so they can SIGKILL it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake")
    args = parser.parse_args()
    FakeLLM(model=args.model, host=args.host, port=args.port, deterministic=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
