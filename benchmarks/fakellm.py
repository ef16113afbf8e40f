"""A local OpenAI-compatible server for the benchmark that times its own handling of each request.

The pipeline overhead is "publish to `say`" minus the time the LLM itself took. The server
knows the second part exactly: it measures, per request, from the moment its handler starts
to the moment the whole answer has been written, and files that time under the benchmark
token it finds in the message being answered. Replies are random words plus the token, so
the service's repeated-reply check never refuses one, and the token lets the benchmark match
each `say` on the bus to the mention that caused it.

It answers both plain (`chat.completion`) and streaming (SSE `chat.completion.chunk`) requests,
exactly as the OpenAI wire format has them, so it works whichever way the service asks.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from kryten_llm.tools.simulate import free_port

TOKEN = re.compile(r"zq[a-z]{2,5}\d{6}")
"""Benchmark tokens look like `zqovh000123`: plain word characters that survive every stage."""
HANDLED_MAX = 100_000
PROBE_PREFIX = "zqst"
"""Start-up probes (`zqsta...`) are answered at once even by the slow server: otherwise the
probes sent every 10 ms while the first one waits 2 s would fill the reply workers."""
_WORD_TEXT = (
    "kick punch spin roundhouse sweep block parry dodge flip leap stunt fight scene villain "
    "hero warehouse rooftop alley dojo master student sensei legend sequel dubbing soundtrack "
    "synth neon crane tiger dragon mantis snake monkey eagle stance chop elbow knee throw "
    "counter feint combo grapple slam choke lock escape chase crash jump fall climb sprint "
    "tea noodle popcorn nacho soda couch blanket remote pause rewind replay cult classic reel "
    "tape VHS drive trailer poster credit cameo montage training sunrise bamboo temple bridge"
)
WORDS = _WORD_TEXT.split()


def last_user_text(body: dict[str, Any]) -> str:
    """The content of the last `user` message: the service puts the message being answered last."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def token_of(body: dict[str, Any]) -> str:
    """The token of the message being answered (the last one: earlier ones are chat history)."""
    found = TOKEN.findall(last_user_text(body))
    return found[-1] if found else ""


class BenchLLM:
    """`/v1/chat/completions` on 127.0.0.1 with a fixed delay; records its own handling time."""

    def __init__(self, delay_seconds: float, seed: int = 7) -> None:
        self.delay_seconds = delay_seconds
        self.port = free_port()
        self.handled: OrderedDict[str, float] = OrderedDict()
        self.last_body: dict[str, Any] = {}
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def handling_seconds(self, token: str) -> float:
        """Server-side time spent on every request for `token` (a regenerate makes two)."""
        return self.handled.get(token, 0.0)

    def _reply_text(self, token: str) -> str:
        words = self._rng.sample(WORDS, 9)
        return f"{words[0].capitalize()} {' '.join(words[1:])} {token}."

    def _record(self, token: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.handled[token] = self.handled.get(token, 0.0) + elapsed
        while len(self.handled) > HANDLED_MAX:
            self.handled.popitem(last=False)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
            self.last_body = body
            token = token_of(body)
            if self.delay_seconds and not token.startswith(PROBE_PREFIX):
                await asyncio.sleep(self.delay_seconds)
            text = self._reply_text(token)
            if body.get("stream"):
                response = await self._stream(request, text)
            else:
                response = web.json_response(_completion(text))
                await response.prepare(request)
                await response.write_eof()
            self._record(token, started)
            return response
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, text: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in _chunks(text):
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench-model"}]})

    async def start(self) -> BenchLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "bench-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112},
    }


def _chunks(text: str) -> list[dict[str, Any]]:
    """The SSE chunks of one streamed answer: content, finish, then usage."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench-model"}
    return [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112},
        },
    ]
