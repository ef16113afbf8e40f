"""OpenAI-compatible `/chat/completions`: OpenAI, vLLM, LM Studio, llama.cpp server, and more.

Two request shapes. Most models take `max_tokens` and `temperature`. OpenAI's reasoning models
(the o-series and the gpt-5 family) reject both with a 400 (`unsupported_parameter` for
`max_tokens`, `unsupported_value` for any temperature but 1): they take
`max_completion_tokens`, which bounds the hidden reasoning and the visible answer together,
and no temperature. `ProviderSettings.reasoning_model` picks the shape; unset, the model name
decides (`is_reasoning_model`). A reasoning model that spends the whole budget thinking
answers with empty content and finish reason `length`: that is the `max_tokens` failure.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from kryten_llm.llm.providers.base import (
    Completion,
    Provider,
    ProviderError,
    StreamItem,
    StreamUsage,
    as_dict,
    int_or_none,
)
from kryten_llm.types import LLMRequest

STREAM_DONE = "[DONE]"
_REASONING_NAME = re.compile(r"(?i)(?:o\d|gpt-5)(?![a-z0-9])")
"""OpenAI's reasoning model names: `o1`, `o3-mini`, `o4-mini`, `gpt-5`, `gpt-5-nano`,
`gpt-5.1` ... (not `gpt-50`, not `omni`)."""


def is_reasoning_model(model: str) -> bool:
    """Whether `model` names an OpenAI reasoning model (after any `vendor/` prefix)."""
    return _REASONING_NAME.match(model.rsplit("/", 1)[-1]) is not None


def chat_messages(request: LLMRequest) -> list[dict[str, str]]:
    """The request as OpenAI-style role/content messages, system prompt first."""
    return [{"role": "system", "content": request.system}] + [
        {"role": m.role, "content": m.content} for m in request.messages
    ]


class OpenAICompatibleProvider(Provider):
    """POST `{base_url}/chat/completions` with a bearer key, read `choices[0].message.content`.

    Streams are SSE: `data: {chunk}` events with `choices[0].delta.content`, a final chunk with
    `usage` (asked for via `stream_options.include_usage`), then `data: [DONE]`.
    """

    def models_url(self) -> str:
        return f"{self.settings.base_url}/models"

    @property
    def reasoning(self) -> bool:
        """Send the reasoning models' shape (see the module docstring)."""
        configured = self.settings.reasoning_model
        return is_reasoning_model(self.model) if configured is None else configured

    def payload(self, request: LLMRequest, *, stream: bool = False) -> dict[str, Any]:
        limit = request.max_tokens or self.settings.max_tokens
        body: dict[str, Any] = {"model": self.settings.model, "messages": chat_messages(request)}
        if self.reasoning:
            body["max_completion_tokens"] = limit
        else:
            body["max_tokens"] = limit
            body["temperature"] = (
                request.temperature
                if request.temperature is not None
                else self.settings.temperature
            )
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def completion_url(self) -> str:
        return f"{self.settings.base_url}/chat/completions"

    def completion_payload(self, request: LLMRequest) -> dict[str, Any]:
        return self.payload(request)

    def read_completion(self, data: dict[str, Any]) -> Completion:
        usage = as_dict(data.get("usage"))
        return Completion(
            self._content(data),
            data.get("model"),
            int_or_none(usage.get("prompt_tokens")),
            int_or_none(usage.get("completion_tokens")),
        )

    async def stream(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> AsyncIterator[StreamItem]:
        url = f"{self.settings.base_url}/chat/completions"
        payload = self.payload(request, stream=True)
        usage: StreamUsage | None = None
        finished = answered = False
        finish: str | None = None
        async with self._stream_response(
            session, url, payload, self.headers(), timeout_seconds
        ) as resp:
            async for event in self._sse(resp, timeout_seconds):
                if event.data.strip() == STREAM_DONE:
                    finished = True
                    break
                chunk = self._json_object(event.data, "stream chunk")
                if "error" in chunk:
                    raise self._embedded_error(chunk["error"])
                usage = _usage(chunk) or usage
                delta, done = _delta(chunk)
                finish = done or finish
                finished = finished or bool(done)
                if delta.strip():
                    answered = True
                if delta:
                    yield delta
        if not finished:
            raise self._error("stream_cut", "stream ended without [DONE]", retryable=True)
        if not answered and finish == "length":
            raise self._out_of_tokens()
        yield usage or StreamUsage(None, None, self.model)

    def _content(self, data: dict[str, Any]) -> str:
        if "error" in data and not data.get("choices"):
            raise self._embedded_error(data["error"])
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self._error("empty", "response has no choices")
        first = choices[0] if isinstance(choices[0], dict) else {}
        message = as_dict(first.get("message"))
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            if first.get("finish_reason") == "length":
                raise self._out_of_tokens()
            raise self._error("empty", "response has no text content")
        return content

    def _out_of_tokens(self) -> ProviderError:
        return self._error(
            "max_tokens",
            "the model used its whole token budget before answering (finish reason length; "
            "a reasoning model's budget includes its reasoning): raise max_tokens",
        )


def _delta(chunk: dict[str, Any]) -> tuple[str, str | None]:
    """(text delta, the finish_reason this chunk carries, if any) of one stream chunk."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", None
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    reason = choices[0].get("finish_reason")
    finish = (reason if isinstance(reason, str) else "stop") if reason else None
    return (content if isinstance(content, str) else ""), finish


def _usage(chunk: dict[str, Any]) -> StreamUsage | None:
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return None
    model = chunk.get("model")
    return StreamUsage(
        int_or_none(usage.get("prompt_tokens")),
        int_or_none(usage.get("completion_tokens")),
        model if isinstance(model, str) else None,
    )
