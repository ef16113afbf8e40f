"""Ollama's native API: POST `{base}/api/chat`, streamed as newline-delimited JSON.

The native API (rather than Ollama's OpenAI shim) is what exposes `keep_alive` and
`options.num_predict`. Works against a local or a remote server, over http or https; a bearer
key is sent if configured, for servers behind an authenticating proxy.
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
    strip_suffix,
)
from kryten_llm.llm.providers.openai_compatible import chat_messages
from kryten_llm.types import LLMRequest


class OllamaProvider(Provider):
    """`message.content` from `/api/chat`; tokens from `prompt_eval_count` / `eval_count`."""

    @property
    def root(self) -> str:
        # The shared default base_url is the OpenAI-style `.../v1`; the native API sits above.
        return strip_suffix(self.settings.base_url, "/v1", "/api")

    def models_url(self) -> str:
        return f"{self.root}/api/tags"

    def model_listed(self, data: Any) -> bool | None:
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            return None
        wanted = {self.model, f"{self.model}:latest"}
        return any(
            isinstance(m, dict) and (m.get("name") in wanted or m.get("model") in wanted)
            for m in models
        )

    def payload(self, request: LLMRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(request),
            "stream": stream,
            "options": {
                "num_predict": request.max_tokens or self.settings.max_tokens,
                "temperature": (
                    request.temperature
                    if request.temperature is not None
                    else self.settings.temperature
                ),
            },
        }
        if self.settings.keep_alive is not None:
            body["keep_alive"] = self.settings.keep_alive
        return body

    def completion_url(self) -> str:
        return f"{self.root}/api/chat"

    def completion_payload(self, request: LLMRequest) -> dict[str, Any]:
        return self.payload(request, stream=False)

    def read_completion(self, data: dict[str, Any]) -> Completion:
        if "error" in data:
            raise self._embedded_error(data["error"])
        message = as_dict(data.get("message"))
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise self._error("empty", "response has no message content")
        return Completion(
            content,
            data.get("model"),
            int_or_none(data.get("prompt_eval_count")),
            int_or_none(data.get("eval_count")),
        )

    async def stream(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> AsyncIterator[StreamItem]:
        usage: StreamUsage | None = None
        async with self._stream_response(
            session,
            f"{self.root}/api/chat",
            self.payload(request, stream=True),
            self.headers(),
            timeout_seconds,
        ) as resp:
            async for chunk in self._ndjson(resp, timeout_seconds):
                if "error" in chunk:
                    raise self._embedded_error(chunk["error"])
                message = chunk.get("message")
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str) and content:
                    yield content
                if chunk.get("done") is True:
                    model = chunk.get("model")
                    usage = StreamUsage(
                        int_or_none(chunk.get("prompt_eval_count")),
                        int_or_none(chunk.get("eval_count")),
                        model if isinstance(model, str) else None,
                    )
                    break
        if usage is None:
            raise self._error("stream_cut", "stream ended without done=true", retryable=True)
        yield usage
