"""Local HTTP servers that speak each provider's real wire format, with scripted faults.

One `FakeProvider` per wire format (`openai_compatible`, `openrouter`, `ollama`, `anthropic`,
`gemini`) listens on 127.0.0.1. Each chat request takes the next behaviour from `script`, or
`default` when the script is empty. Behaviours are built by the functions below (`reply`,
`status`, `hang`, `malformed`, `empty`, `null_content`, `stream`, `cut`, ...) and render
themselves in the server's own format: JSON bodies, error objects, `Retry-After`, SSE with
`[DONE]`, Anthropic's typed events, Gemini's SSE, Ollama's NDJSON.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kryten_llm.config import ProviderSettings, ProviderType
from tests.support.nats_server import free_port

PROMPT_TOKENS = 42
COMPLETION_TOKENS = 7

Behaviour = Callable[["FakeProvider", web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    """One request the server received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


# --- per-format rendering ---------------------------------------------------------------------


def _wants_stream(kind: str, request: web.Request, body: dict[str, Any]) -> bool:
    if kind == "gemini":
        return request.path.endswith(":streamGenerateContent")
    if kind == "ollama":
        return body.get("stream", True) is not False  # Ollama streams unless told not to
    return bool(body.get("stream"))


def success_body(kind: str, text: Any, model: str, usage: bool = True) -> dict[str, Any]:
    """A complete (non-streamed) answer carrying `text` (which may be None to test nulls)."""
    if kind in ("openai_compatible", "openrouter"):
        body: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
        if usage:
            body["usage"] = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            }
        return body
    if kind == "ollama":
        body = {
            "model": model,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": text},
            "done": True,
            "done_reason": "stop",
        }
        if usage:
            body |= {"prompt_eval_count": PROMPT_TOKENS, "eval_count": COMPLETION_TOKENS}
        return body
    if kind == "anthropic":
        body = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
        }
        if usage:
            body["usage"] = {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}
        return body
    body = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "modelVersion": model,
    }
    if usage:
        body["usageMetadata"] = {
            "promptTokenCount": PROMPT_TOKENS,
            "candidatesTokenCount": COMPLETION_TOKENS,
            "totalTokenCount": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
    return body


def empty_body(kind: str, model: str) -> dict[str, Any]:
    """A 200 answer with nothing in it: no choices / no content blocks / no candidates."""
    if kind in ("openai_compatible", "openrouter"):
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": model, "choices": []}
    if kind == "ollama":
        return {"model": model, "message": {"role": "assistant", "content": ""}, "done": True}
    if kind == "anthropic":
        return {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    return {"candidates": [], "modelVersion": model}


def error_response(kind: str, status: int, message: str) -> web.Response:
    """The error body each provider really sends."""
    payload: dict[str, Any]
    if kind in ("openai_compatible", "openrouter"):
        payload = {"error": {"message": message, "type": "server_error", "code": status}}
    elif kind == "ollama":
        payload = {"error": message}
    elif kind == "anthropic":
        kinds = {429: "rate_limit_error", 401: "authentication_error", 529: "overloaded_error"}
        payload = {
            "type": "error",
            "error": {"type": kinds.get(status, "api_error"), "message": message},
        }
    else:
        payload = {"error": {"code": status, "message": message, "status": "UNAVAILABLE"}}
    return web.json_response(payload, status=status)


def stream_frames(kind: str, chunks: list[str], model: str) -> tuple[list[bytes], list[bytes]]:
    """(frames carrying the chunks, closing frames with finish/usage/end marker)."""

    def sse(data: Any, event: str | None = None) -> bytes:
        head = f"event: {event}\n" if event else ""
        text = data if isinstance(data, str) else json.dumps(data)
        return f"{head}data: {text}\n\n".encode()

    if kind in ("openai_compatible", "openrouter"):
        body = [
            sse({"model": model, "choices": [{"index": 0, "delta": {"content": c}}]})
            for c in chunks
        ]
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}
        tail = [
            sse({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            sse({"model": model, "choices": [], "usage": usage}),
            sse("[DONE]"),
        ]
        return body, tail
    if kind == "ollama":
        body = [
            (
                json.dumps(
                    {"model": model, "message": {"role": "assistant", "content": c}, "done": False}
                )
                + "\n"
            ).encode()
            for c in chunks
        ]
        final = {
            "model": model,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "prompt_eval_count": PROMPT_TOKENS,
            "eval_count": COMPLETION_TOKENS,
        }
        return body, [(json.dumps(final) + "\n").encode()]
    if kind == "anthropic":
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
            },
        }
        head = [
            sse(start, "message_start"),
            sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
            sse({"type": "ping"}, "ping"),
        ]
        body = [
            sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": c},
                },
                "content_block_delta",
            )
            for c in chunks
        ]
        tail = [
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": COMPLETION_TOKENS},
                },
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return head + body, tail
    body = [
        sse(
            {
                "candidates": [{"content": {"role": "model", "parts": [{"text": c}]}, "index": 0}],
                "modelVersion": model,
            }
        )
        for c in chunks
    ]
    final = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": ""}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": PROMPT_TOKENS,
            "candidatesTokenCount": COMPLETION_TOKENS,
        },
        "modelVersion": model,
    }
    return body, [sse(final)]


async def _open_stream(kind: str, request: web.Request) -> web.StreamResponse:
    content_type = "application/x-ndjson" if kind == "ollama" else "text/event-stream"
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    return response


# --- behaviours -------------------------------------------------------------------------------


def reply(
    text: Any = "Hello from the fake.", *, usage: bool = True, delay_seconds: float = 0.0
) -> Behaviour:
    """A correct answer; streamed in word-sized chunks when the request asked for a stream."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        if delay_seconds:
            await asyncio.sleep(delay_seconds)
        if _wants_stream(fake.kind, request, body) and isinstance(text, str):
            words = text.split(" ")
            chunks = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
            return await stream(chunks)(fake, request, body)
        return web.json_response(success_body(fake.kind, text, fake.model, usage))

    return behaviour


def status(code: int, message: str = "boom", *, retry_after: str | None = None) -> Behaviour:
    """An HTTP error in the provider's own error format, optionally with `Retry-After`."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        response = error_response(fake.kind, code, message)
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    return behaviour


def hang(seconds: float = 3600.0) -> Behaviour:
    """Accept the request and say nothing (until the client gives up)."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response(success_body(fake.kind, "too late", fake.model))

    return behaviour


def malformed(text: str = '{"choices": [ this is not json') -> Behaviour:
    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        return web.Response(text=text, content_type="application/json")

    return behaviour


def raw_json(payload: Any, code: int = 200) -> Behaviour:
    """Any JSON body at all (hostile shapes, embedded errors)."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        return web.json_response(payload, status=code)

    return behaviour


def empty() -> Behaviour:
    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        return web.json_response(empty_body(fake.kind, fake.model))

    return behaviour


def null_content() -> Behaviour:
    return reply(None)


def stream(
    chunks: list[str],
    *,
    first_delay_seconds: float = 0.0,
    delay_between_seconds: float = 0.0,
    pause_after_first_seconds: float = 0.0,
) -> Behaviour:
    """A complete stream in the provider's format, paced as told."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        frames, tail = stream_frames(fake.kind, chunks, fake.model)
        if first_delay_seconds:
            await asyncio.sleep(first_delay_seconds)
        response = await _open_stream(fake.kind, request)
        for index, frame in enumerate(frames):
            await response.write(frame)
            if pause_after_first_seconds and index == len(frames) - len(chunks):
                await asyncio.sleep(pause_after_first_seconds)
            elif delay_between_seconds:
                await asyncio.sleep(delay_between_seconds)
        for frame in tail:
            await response.write(frame)
        await response.write_eof()
        return response

    return behaviour


def cut(chunks: list[str], *, abort: bool = True, stall_seconds: float = 0.0) -> Behaviour:
    """A stream that breaks after `chunks`: the connection is dropped (`abort`), ends cleanly
    without its end marker, or (`stall_seconds`) goes silent."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        frames, _tail = stream_frames(fake.kind, chunks, fake.model)
        response = await _open_stream(fake.kind, request)
        for frame in frames:
            await response.write(frame)
        if stall_seconds:
            await asyncio.sleep(stall_seconds)
        if abort and request.transport is not None:
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    return behaviour


def redirect(location: str, code: int = 307) -> Behaviour:
    """Answer with a redirect to `location` (a proxy or endpoint that moved, or an attacker)."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return behaviour


def stream_error_event(chunks: list[str], message: str = "Overloaded") -> Behaviour:
    """Some deltas, then the format's in-stream error object."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        frames, _tail = stream_frames(fake.kind, chunks, fake.model)
        response = await _open_stream(fake.kind, request)
        for frame in frames:
            await response.write(frame)
        if fake.kind == "ollama":
            await response.write((json.dumps({"error": message}) + "\n").encode())
        elif fake.kind == "anthropic":
            err = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
            await response.write(f"event: error\ndata: {json.dumps(err)}\n\n".encode())
        else:
            err2 = {"error": {"code": 502, "message": message}}
            await response.write(f"data: {json.dumps(err2)}\n\n".encode())
        await response.write_eof()
        return response

    return behaviour


# --- the server -------------------------------------------------------------------------------


@dataclass
class FakeProvider:
    """One running fake endpoint of one wire format."""

    kind: ProviderType
    port: int
    model: str = "fake-model"
    script: deque[Behaviour] = field(default_factory=deque)
    default: Behaviour = field(default_factory=reply)
    requests: list[Recorded] = field(default_factory=list)
    models_status: int = 200
    models_redirect: str | None = None
    """When set, the models listing answers 307 to this location."""
    host: str = "127.0.0.1"
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        root = f"http://{self.host}:{self.port}"
        return root + "/v1" if self.kind in ("openai_compatible", "openrouter") else root

    def settings(self, **overrides: Any) -> ProviderSettings:
        """ProviderSettings pointing at this server."""
        values: dict[str, Any] = {"type": self.kind, "base_url": self.base_url, "model": self.model}
        return ProviderSettings(**(values | overrides))

    def then(self, *behaviours: Behaviour) -> FakeProvider:
        """Queue behaviours for the next requests, in order."""
        self.script.extend(behaviours)
        return self

    def always(self, behaviour: Behaviour) -> FakeProvider:
        self.default = behaviour
        return self

    def reset(self) -> None:
        self.script.clear()
        self.default = reply()
        self.requests.clear()
        self.models_status = 200
        self.models_redirect = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return error_response(self.kind, 400, "request body is not JSON")
        self.requests.append(
            Recorded(request.path, dict(request.query), dict(request.headers), body)
        )
        behaviour = self.script.popleft() if self.script else self.default
        return await behaviour(self, request, body)

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(Recorded(request.path, dict(request.query), dict(request.headers), {}))
        if self.models_redirect is not None:
            return web.Response(status=307, headers={"Location": self.models_redirect})
        if self.models_status != 200:
            return error_response(self.kind, self.models_status, "invalid key")
        if self.kind == "ollama":
            return web.json_response(
                {"models": [{"name": f"{self.model}:latest", "model": f"{self.model}:latest"}]}
            )
        if self.kind == "gemini":
            return web.json_response({"models": [{"name": f"models/{self.model}"}]})
        return web.json_response({"object": "list", "data": [{"id": self.model}]})

    def _routes(self, app: web.Application) -> None:
        if self.kind in ("openai_compatible", "openrouter"):
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_get("/v1/models", self._models)
        elif self.kind == "ollama":
            app.router.add_post("/api/chat", self._chat)
            app.router.add_get("/api/tags", self._models)
        elif self.kind == "anthropic":
            app.router.add_post("/v1/messages", self._chat)
            app.router.add_get("/v1/models", self._models)
        else:
            app.router.add_post("/v1beta/models/{action}", self._chat)
            app.router.add_get("/v1beta/models", self._models)

    async def start(self) -> FakeProvider:
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


KINDS: tuple[ProviderType, ...] = (
    "openai_compatible",
    "openrouter",
    "ollama",
    "anthropic",
    "gemini",
)


async def start_fake_provider(
    kind: ProviderType, model: str = "fake-model", host: str = "127.0.0.1"
) -> FakeProvider:
    """A fake on `host` (another loopback address, e.g. 127.0.0.2, is another host)."""
    return await FakeProvider(kind=kind, port=free_port(), model=model, host=host).start()


def closed_port_url(kind: ProviderType) -> str:
    """A base URL on which nothing listens: connections are refused."""
    root = f"http://127.0.0.1:{free_port()}"
    return root + "/v1" if kind in ("openai_compatible", "openrouter") else root
