"""Anthropic Messages API: POST `{base}/v1/messages` with `x-api-key` and `anthropic-version`.

Body: `system`, alternating `messages`, `max_tokens` (required). Answer: `content[].text`,
`usage.input_tokens/output_tokens`. Errors: `{"type": "error", "error": {"type", "message"}}`
(529 `overloaded_error` is retryable like any 5xx). Streams are SSE with typed events:
`message_start` (input tokens), `content_block_delta` (`text_delta`), `message_delta` (output
tokens), `message_stop` (the end marker), `ping`, and `error`.
"""

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
    merged_turns,
    strip_suffix,
)
from kryten_llm.types import LLMRequest

ANTHROPIC_MAX_TEMPERATURE = 1.0


class AnthropicProvider(Provider):
    """Claude models through the Messages API."""

    @property
    def root(self) -> str:
        return strip_suffix(self.settings.base_url, "/v1")

    key_header = ("x-api-key", "{key}")

    def fixed_headers(self) -> dict[str, str]:
        return {"anthropic-version": self.settings.anthropic_version}

    def models_url(self) -> str:
        return f"{self.root}/v1/models"

    def payload(self, request: LLMRequest, *, stream: bool) -> dict[str, Any]:
        temperature = (
            request.temperature if request.temperature is not None else self.settings.temperature
        )
        body: dict[str, Any] = {
            "model": self.model,
            "system": request.system,
            "messages": [{"role": r, "content": t} for r, t in merged_turns(request)],
            "max_tokens": request.max_tokens or self.settings.max_tokens,
            # Anthropic accepts 0..1; our config allows up to 2 for other providers.
            "temperature": min(temperature, ANTHROPIC_MAX_TEMPERATURE),
        }
        if stream:
            body["stream"] = True
        return body

    def completion_url(self) -> str:
        return f"{self.root}/v1/messages"

    def completion_payload(self, request: LLMRequest) -> dict[str, Any]:
        return self.payload(request, stream=False)

    def read_completion(self, data: dict[str, Any]) -> Completion:
        if data.get("type") == "error":
            raise self._embedded_error(data.get("error"))
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self._error("empty", "response has no content blocks")
        text = "".join(
            b["text"]
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
        if not text.strip():
            raise self._error("empty", "response has no text content")
        usage = as_dict(data.get("usage"))
        return Completion(
            text,
            data.get("model"),
            int_or_none(usage.get("input_tokens")),
            int_or_none(usage.get("output_tokens")),
        )

    async def stream(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> AsyncIterator[StreamItem]:
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        model: str | None = None
        finished = False
        async with self._stream_response(
            session,
            f"{self.root}/v1/messages",
            self.payload(request, stream=True),
            self.headers(),
            timeout_seconds,
        ) as resp:
            async for event in self._sse(resp, timeout_seconds):
                data = self._json_object(event.data, "stream event")
                kind = data.get("type") or event.event
                if kind == "error":
                    raise self._embedded_error(data.get("error"))
                if kind == "message_start":
                    message = as_dict(data.get("message"))
                    usage = as_dict(message.get("usage"))
                    prompt_tokens = int_or_none(usage.get("input_tokens"))
                    model = message.get("model") if isinstance(message.get("model"), str) else None
                elif kind == "content_block_delta":
                    delta = as_dict(data.get("delta"))
                    text = delta.get("text")
                    if delta.get("type") == "text_delta" and isinstance(text, str) and text:
                        yield text
                elif kind == "message_delta":
                    usage = as_dict(data.get("usage"))
                    completion_tokens = int_or_none(usage.get("output_tokens"))
                elif kind == "message_stop":
                    finished = True
                    break
        if not finished:
            raise self._error("stream_cut", "stream ended without message_stop", retryable=True)
        yield StreamUsage(prompt_tokens, completion_tokens, model)
