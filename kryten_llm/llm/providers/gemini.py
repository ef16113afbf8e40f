"""Google Gemini: POST `{base}/v1beta/models/{model}:generateContent` with `x-goog-api-key`.

Body: `systemInstruction`, `contents` with roles `user`/`model`, `generationConfig`. Answer:
`candidates[0].content.parts[].text`, `usageMetadata.promptTokenCount/candidatesTokenCount`.
A prompt the safety filter refuses comes back as 200 with `promptFeedback.blockReason` and no
candidates: that is the `blocked` failure. Streams: `:streamGenerateContent?alt=sse`, each SSE
`data:` a partial response; there is no end marker, so the stream is complete once a candidate
carries a `finishReason`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from kryten_llm.llm.providers.base import (
    Completion,
    Provider,
    StreamItem,
    StreamUsage,
    as_dict,
    as_list,
    int_or_none,
    merged_turns,
    strip_suffix,
)
from kryten_llm.types import LLMRequest


class GeminiProvider(Provider):
    """Gemini models through the Generative Language API."""

    @property
    def root(self) -> str:
        return strip_suffix(self.settings.base_url, "/v1beta")

    @property
    def model_path(self) -> str:
        return quote(self.model.removeprefix("models/"), safe="-._~")

    key_header = ("x-goog-api-key", "{key}")

    def models_url(self) -> str:
        return f"{self.root}/v1beta/models"

    def model_listed(self, data: Any) -> bool | None:
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            return None
        wanted = "models/" + self.model.removeprefix("models/")
        return any(isinstance(m, dict) and m.get("name") == wanted for m in models)

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        return {
            "systemInstruction": {"parts": [{"text": request.system}]},
            "contents": [
                {"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]}
                for role, text in merged_turns(request)
            ],
            "generationConfig": {
                "maxOutputTokens": request.max_tokens or self.settings.max_tokens,
                "temperature": (
                    request.temperature
                    if request.temperature is not None
                    else self.settings.temperature
                ),
            },
        }

    def completion_url(self) -> str:
        return f"{self.root}/v1beta/models/{self.model_path}:generateContent"

    def completion_payload(self, request: LLMRequest) -> dict[str, Any]:
        return self.payload(request)

    def read_completion(self, data: dict[str, Any]) -> Completion:
        if "error" in data and "candidates" not in data:
            raise self._embedded_error(data["error"])
        text, _finished = self._candidate_text(data)
        if not text.strip():
            raise self._error("empty", "response has no text content")
        prompt_tokens, completion_tokens = _usage(data)
        return Completion(text, data.get("modelVersion"), prompt_tokens, completion_tokens)

    async def stream(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> AsyncIterator[StreamItem]:
        url = f"{self.root}/v1beta/models/{self.model_path}:streamGenerateContent?alt=sse"
        usage: tuple[int | None, int | None] = (None, None)
        model: str | None = None
        finished = False
        async with self._stream_response(
            session, url, self.payload(request), self.headers(), timeout_seconds
        ) as resp:
            async for event in self._sse(resp, timeout_seconds):
                data = self._json_object(event.data, "stream chunk")
                if "error" in data and "candidates" not in data:
                    raise self._embedded_error(data["error"])
                text, done = self._candidate_text(data)
                if text:
                    yield text
                if isinstance(data.get("usageMetadata"), dict):
                    usage = _usage(data)
                if isinstance(data.get("modelVersion"), str):
                    model = data["modelVersion"]
                finished = finished or done
        if not finished:
            raise self._error("stream_cut", "stream ended without a finishReason", retryable=True)
        yield StreamUsage(usage[0], usage[1], model)

    def _candidate_text(self, data: dict[str, Any]) -> tuple[str, bool]:
        """(text of the first candidate, whether it carries a finishReason).

        Raises `blocked` when the prompt was refused, and skips "thought" parts, which are
        the model's reasoning rather than its answer.
        """
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = data.get("promptFeedback")
            reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
            if reason:
                raise self._error("blocked", f"prompt blocked: {reason}")
            raise self._error("empty", "response has no candidates")
        first = candidates[0] if isinstance(candidates[0], dict) else {}
        content = as_dict(first.get("content"))
        parts = as_list(content.get("parts"))
        text = "".join(
            p["text"]
            for p in parts
            if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
        )
        finish = first.get("finishReason")
        if not text and finish in ("SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII"):
            raise self._error("blocked", f"answer blocked: {finish}")
        return text, bool(finish)


def _usage(data: dict[str, Any]) -> tuple[int | None, int | None]:
    meta = as_dict(data.get("usageMetadata"))
    return int_or_none(meta.get("promptTokenCount")), int_or_none(meta.get("candidatesTokenCount"))
