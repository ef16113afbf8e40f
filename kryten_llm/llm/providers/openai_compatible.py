"""OpenAI-compatible `/chat/completions`: OpenAI, vLLM, LM Studio, llama.cpp server, and more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from kryten_llm.llm.providers.base import (
    Completion,
    Provider,
    StreamItem,
    StreamUsage,
    as_dict,
    int_or_none,
)
from kryten_llm.types import LLMRequest

STREAM_DONE = "[DONE]"


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

    def payload(self, request: LLMRequest, *, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": chat_messages(request),
            "max_tokens": request.max_tokens or self.settings.max_tokens,
            "temperature": (
                request.temperature
                if request.temperature is not None
                else self.settings.temperature
            ),
        }
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
        finished = False
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
                finished = finished or done
                if delta:
                    yield delta
        if not finished:
            raise self._error("stream_cut", "stream ended without [DONE]", retryable=True)
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
            raise self._error("empty", "response has no text content")
        return content


def _delta(chunk: dict[str, Any]) -> tuple[str, bool]:
    """(text delta, whether this chunk carries a finish_reason) of one stream chunk."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", False
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    finished = bool(choices[0].get("finish_reason"))
    return (content if isinstance(content, str) else ""), finished


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
