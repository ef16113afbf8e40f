"""A local OpenAI-compatible HTTP server whose answers, delays and faults each test controls.

It speaks the real wire format (JSON bodies, error objects, `Retry-After`) so the provider code
under test is exercised exactly as against a real endpoint, and it records every request and
how many were in flight at once (to prove replies overlap).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kryten_llm.tools.offline import write_event_stream
from tests.support.nats_server import free_port

Behaviour = Callable[[dict[str, Any]], Awaitable[web.StreamResponse]]


def completion(
    text: str | None, *, model: str = "fake-model", usage: bool = True
) -> dict[str, Any]:
    """An OpenAI chat.completion body with `text` as the assistant message."""
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1795313438,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
    return body


def error_body(status: int, message: str) -> web.Response:
    payload = {"error": {"message": message, "type": "server_error", "code": status}}
    return web.json_response(payload, status=status)


def last_user_message(request_body: dict[str, Any]) -> str:
    messages = request_body.get("messages") or []
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""


@dataclass
class FakeLLM:
    """Handle to a running fake server; set `behaviour` to change what it answers."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    behaviour: Behaviour | None = None
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.request_times.clear()
        self.in_flight = 0
        self.max_in_flight = 0
        self.behaviour = None

    def reply_with(self, text: str | None, delay_seconds: float = 0.0) -> None:
        async def behaviour(body: dict[str, Any]) -> web.StreamResponse:
            if delay_seconds:
                await asyncio.sleep(delay_seconds)
            return web.json_response(completion(text))

        self.behaviour = behaviour

    def reply_in_turn(self, *texts: str) -> None:
        """Answer each request with the next text, in order (a scripted conversation)."""
        answers = iter(texts)

        async def behaviour(body: dict[str, Any]) -> web.StreamResponse:
            return web.json_response(completion(next(answers)))

        self.behaviour = behaviour

    def echo(self, prefix: str = "You said: ", delay_seconds: float = 0.0) -> None:
        """Answer with the last user message: lets a test see exactly what the LLM was sent."""

        async def behaviour(body: dict[str, Any]) -> web.StreamResponse:
            if delay_seconds:
                await asyncio.sleep(delay_seconds)
            return web.json_response(completion(prefix + last_user_message(body)))

        self.behaviour = behaviour

    def fail_with(self, status: int, message: str = "boom", retry_after: str | None = None) -> None:
        async def behaviour(body: dict[str, Any]) -> web.StreamResponse:
            response = error_body(status, message)
            if retry_after is not None:
                response.headers["Retry-After"] = retry_after
            return response

        self.behaviour = behaviour

    def hang(self, seconds: float = 3600.0) -> None:
        async def behaviour(body: dict[str, Any]) -> web.StreamResponse:
            await asyncio.sleep(seconds)
            return web.json_response(completion("too late"))

        self.behaviour = behaviour

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.request_times.append(asyncio.get_running_loop().time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.behaviour is None:
                response: web.StreamResponse = web.json_response(
                    completion("Hello from the fake LLM.")
                )
            else:
                response = await self.behaviour(body)
            if body.get("stream") and isinstance(response, web.Response):
                return await self._as_event_stream(request, response)
            return response
        finally:
            self.in_flight -= 1

    async def _as_event_stream(
        self, request: web.Request, response: web.Response
    ) -> web.StreamResponse:
        """A completion re-sent as OpenAI's SSE chunks, word by word, as a real server would.

        Errors (status >= 400) and non-JSON bodies are returned unchanged, exactly as an
        OpenAI-compatible server answers a failed stream request.
        """
        if response.status >= 400 or response.content_type != "application/json":
            return response
        assert isinstance(response.body, bytes)
        data = json.loads(response.body)
        choices = data.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content")
        if not isinstance(text, str):
            return response
        return await write_event_stream(request, str(data.get("model")), text, data.get("usage"))

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    async def start(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def start_fake_llm() -> FakeLLM:
    return await FakeLLM(port=free_port()).start()


__all__ = ["FakeLLM", "completion", "error_body", "json", "start_fake_llm"]
