"""Local HTTP servers that speak each provider's real wire format, with scripted faults.

One `FakeProvider` per wire format (`openai_compatible`, `openrouter`, `ollama`, `anthropic`,
`gemini`) listens on 127.0.0.1. Each chat request takes the next behaviour from `script`, or
`default` when the script is empty. Behaviours are built by the functions below (`reply`,
`status`, `hang`, `malformed`, `empty`, `null_content`, `stream`, `cut`, ...) and render
themselves in the server's own format: JSON bodies, error objects, `Retry-After`, SSE with
`[DONE]`, Anthropic's typed events, Gemini's SSE, Ollama's NDJSON.

Before any behaviour, a request is checked the way the real API checks it, and refused with
its real error when it has the wrong shape for the model:

- OpenAI (`openai_compatible`): a reasoning model (o-series, gpt-5 family, by the requested
  model's name, or `reasoning=True`) refuses `max_tokens` (400 `unsupported_parameter`) and any
  `temperature` but 1 (400 `unsupported_value`). A server with `knows_max_completion_tokens`
  false (a compatible server older than the field) refuses `max_completion_tokens` as an
  unrecognized argument. OpenRouter takes `max_tokens` for every model.
- Gemini: 2.5 models think. Without a `thinkingConfig` (or with budget -1) the fake thinks
  `dynamic_thinking_tokens`; with a budget, at most that; 0 is off on Flash and refused on Pro
  (400 INVALID_ARGUMENT). A `thinkingConfig` sent to a model that does not think is refused.
  Thinking is spent from `maxOutputTokens`: when nothing is left, the answer has no text and
  finish reason `MAX_TOKENS`, and `usageMetadata.thoughtsTokenCount` says what was spent.
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
DYNAMIC_THINKING_TOKENS = 300
"""What a fake Gemini 2.5 thinks when the request leaves it to the model."""
PRO_MIN_THINKING_TOKENS = 128

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


def is_openai_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models by name (written here apart from the provider's own check)."""
    name = model.rsplit("/", 1)[-1].lower()
    return name.startswith(("o1", "o3", "o4", "gpt-5"))


def openai_error(status: int, message: str, param: str, code: str) -> web.Response:
    """An OpenAI `invalid_request_error`, as the API sends it."""
    payload = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return web.json_response(payload, status=status)


def gemini_error(status: int, message: str, state: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "status": state}}, status=status
    )


def success_body(
    kind: str, text: Any, model: str, usage: bool = True, thoughts: int = 0
) -> dict[str, Any]:
    """A complete (non-streamed) answer carrying `text` (which may be None to test nulls).

    `thoughts`: Gemini thinking tokens spent (reported as `thoughtsTokenCount`).
    """
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
        body["usageMetadata"] = gemini_usage(COMPLETION_TOKENS, thoughts)
    return body


def gemini_usage(answer_tokens: int | None, thoughts: int) -> dict[str, Any]:
    """Gemini's `usageMetadata`: thinking is reported apart, and only when there was some."""
    meta: dict[str, Any] = {"promptTokenCount": PROMPT_TOKENS}
    if answer_tokens is not None:
        meta["candidatesTokenCount"] = answer_tokens
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    meta["totalTokenCount"] = PROMPT_TOKENS + (answer_tokens or 0) + thoughts
    return meta


def empty_body(kind: str, model: str) -> dict[str, Any]:
    """A 200 answer with nothing in it: no choices / no content blocks / no candidates."""
    if kind in ("openai_compatible", "openrouter"):
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": model, "choices": []}
    if kind == "ollama":
        return {"model": model, "message": {"role": "assistant", "content": ""}, "done": True}
    if kind == "anthropic":
        return {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    return {"candidates": [], "modelVersion": model}


def error_response(
    kind: str, status: int, message: str, retry_delay: str | None = None
) -> web.Response:
    """The error body each provider really sends; Gemini's 429 names its retry delay in it."""
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
        state = "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"
        payload = {"error": {"code": status, "message": message, "status": state}}
        if retry_delay is not None:
            payload["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{"description": "Learn more about Gemini API quotas"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
            ]
    return web.json_response(payload, status=status)


def stream_frames(
    kind: str, chunks: list[str], model: str, thoughts: int = 0, finish: str | None = None
) -> tuple[list[bytes], list[bytes]]:
    """(frames carrying the chunks, closing frames with finish/usage/end marker).

    `thoughts`: Gemini thinking tokens spent; `finish`: the finish reason, if not the usual.
    """

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
        reason = finish or "stop"
        tail = [
            sse({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}),
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
                "finishReason": finish or "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": gemini_usage(COMPLETION_TOKENS if chunks else None, thoughts),
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
        thoughts = fake.thoughts(body)
        if fake.out_of_budget(body):
            return await fake.max_tokens_answer(request, body)
        return web.json_response(success_body(fake.kind, text, fake.model, usage, thoughts))

    return behaviour


def status(
    code: int,
    message: str = "boom",
    *,
    retry_after: str | None = None,
    retry_delay: str | None = None,
) -> Behaviour:
    """An HTTP error in the provider's own error format, optionally with `Retry-After` (a
    header) or, for Gemini, a `RetryInfo` `retryDelay` in the body (`"2s"`)."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        response = error_response(fake.kind, code, message, retry_delay)
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
        if fake.out_of_budget(body):
            return await fake.max_tokens_answer(request, body)
        frames, tail = stream_frames(fake.kind, chunks, fake.model, fake.thoughts(body))
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


def reasoning_spent_all() -> Behaviour:
    """An OpenAI reasoning model that used its whole `max_completion_tokens` reasoning: empty
    content, finish reason `length`, every completion token a reasoning token."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        limit = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": limit,
            "total_tokens": PROMPT_TOKENS + limit,
            "completion_tokens_details": {"reasoning_tokens": limit},
        }
        if _wants_stream(fake.kind, request, body):
            frames, tail = stream_frames(fake.kind, [], fake.model, finish="length")
            response = await _open_stream(fake.kind, request)
            for frame in frames + tail:
                await response.write(frame)
            await response.write_eof()
            return response
        answer = success_body(fake.kind, "", fake.model)
        answer["choices"][0]["finish_reason"] = "length"
        answer["usage"] = usage
        return web.json_response(answer)

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
    reasoning: bool | None = None
    """openai_compatible: serve an OpenAI reasoning model; None decides by the model name."""
    knows_max_completion_tokens: bool = True
    """openai_compatible: False refuses `max_completion_tokens` as an unknown argument."""
    dynamic_thinking_tokens: int = DYNAMIC_THINKING_TOKENS
    """gemini 2.5: what the model thinks when the request leaves it to the model."""
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
        self.reasoning = None
        self.knows_max_completion_tokens = True
        self.dynamic_thinking_tokens = DYNAMIC_THINKING_TOKENS

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return error_response(self.kind, 400, "request body is not JSON")
        self.requests.append(
            Recorded(request.path, dict(request.query), dict(request.headers), body)
        )
        refused = self._refuse_shape(body)
        if refused is not None:
            return refused
        behaviour = self.script.popleft() if self.script else self.default
        return await behaviour(self, request, body)

    # --- the request shapes each model accepts (see the module docstring) ---

    def _refuse_shape(self, body: dict[str, Any]) -> web.Response | None:
        if self.kind == "openai_compatible":
            return self._refuse_openai_shape(body)
        if self.kind == "gemini":
            return self._refuse_gemini_shape(body)
        return None

    def _refuse_openai_shape(self, body: dict[str, Any]) -> web.Response | None:
        model = str(body.get("model", ""))
        reasoning = is_openai_reasoning_model(model) if self.reasoning is None else self.reasoning
        if reasoning:
            if "max_tokens" in body:
                return openai_error(
                    400,
                    "Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead.",
                    "max_tokens",
                    "unsupported_parameter",
                )
            temperature = body.get("temperature", 1)
            if temperature != 1:
                return openai_error(
                    400,
                    f"Unsupported value: 'temperature' does not support {temperature} with "
                    "this model. Only the default (1) value is supported.",
                    "temperature",
                    "unsupported_value",
                )
        elif "max_completion_tokens" in body and not self.knows_max_completion_tokens:
            return openai_error(
                400,
                "Unrecognized request argument supplied: max_completion_tokens",
                "max_completion_tokens",
                "unknown_parameter",
            )
        return None

    def _thinks(self) -> bool:
        return self.kind == "gemini" and self.model.startswith("gemini-2.5")

    def _thinking_budget(self, body: dict[str, Any]) -> int | None:
        config = body.get("generationConfig", {}).get("thinkingConfig")
        return None if config is None else int(config.get("thinkingBudget", -1))

    def _refuse_gemini_shape(self, body: dict[str, Any]) -> web.Response | None:
        budget = self._thinking_budget(body)
        if budget is None:
            return None
        if not self._thinks():
            return gemini_error(400, "Thinking is not supported by this model.", "INVALID_ARGUMENT")
        if self.model.startswith("gemini-2.5-pro") and 0 <= budget < PRO_MIN_THINKING_TOKENS:
            return gemini_error(
                400,
                f"Budget {budget} is invalid. This model only works in thinking mode.",
                "INVALID_ARGUMENT",
            )
        return None

    def thoughts(self, body: dict[str, Any]) -> int:
        """Thinking tokens a Gemini 2.5 fake spends on this request (0 for other models)."""
        if not self._thinks():
            return 0
        budget = self._thinking_budget(body)
        dynamic = self.dynamic_thinking_tokens
        wanted = dynamic if budget is None or budget < 0 else min(budget, dynamic)
        limit = int(body.get("generationConfig", {}).get("maxOutputTokens", 8192))
        return min(wanted, limit)

    def out_of_budget(self, body: dict[str, Any]) -> bool:
        """Thinking left no output tokens for an answer (Gemini 2.5)."""
        if not self._thinks():
            return False
        limit = int(body.get("generationConfig", {}).get("maxOutputTokens", 8192))
        return self.thoughts(body) + COMPLETION_TOKENS > limit

    async def max_tokens_answer(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        """Gemini's answer when thinking spent the budget: no content, `MAX_TOKENS`."""
        spent = self.thoughts(body)
        answer = {
            "candidates": [{"finishReason": "MAX_TOKENS", "index": 0}],
            "usageMetadata": gemini_usage(None, spent),
            "modelVersion": self.model,
        }
        if not _wants_stream(self.kind, request, body):
            return web.json_response(answer)
        response = await _open_stream(self.kind, request)
        await response.write(f"data: {json.dumps(answer)}\n\n".encode())
        await response.write_eof()
        return response

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
