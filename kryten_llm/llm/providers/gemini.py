"""Google Gemini: POST `{base}/v1beta/models/{model}:generateContent` with `x-goog-api-key`.

Body: `systemInstruction`, `contents` with roles `user`/`model`, `generationConfig`. Answer:
`candidates[0].content.parts[].text`, `usageMetadata.promptTokenCount/candidatesTokenCount`.
A prompt the safety filter refuses comes back as 200 with `promptFeedback.blockReason` and no
candidates: that is the `blocked` failure. Streams: `:streamGenerateContent?alt=sse`, each SSE
`data:` a partial response; there is no end marker, so the stream is complete once a candidate
carries a `finishReason`.

Thinking (Gemini 2.5): the model spends output tokens thinking before it answers, out of the
same `maxOutputTokens`. With a chat-sized limit and thinking left to the model, it can spend
them all and answer with no text and finish reason `MAX_TOKENS`: the `max_tokens` failure,
so the next provider is asked rather than nothing said. `generationConfig.thinkingConfig.
thinkingBudget` bounds the thinking (`ProviderSettings.thinking_budget`; by default off where
the model allows it, the least allowed where it does not, see `thinking_budget_for`), and
`usageMetadata.thoughtsTokenCount` (billed as output) is counted in the completion tokens.

A 429 carries its retry delay in the body, not a `Retry-After` header: a
`google.rpc.RetryInfo` entry in `error.details` with `retryDelay` (a JSON Duration such as
`"22s"` or `"1.5s"`), which the manager honours like `Retry-After`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from kryten_llm.llm.providers.base import (
    MAX_TOKENS_PER_CALL,
    Completion,
    Provider,
    ProviderError,
    StreamItem,
    StreamUsage,
    SuspectCount,
    as_dict,
    as_list,
    int_or_none,
    merged_turns,
    strip_suffix,
)
from kryten_llm.types import LLMRequest

PRO_MIN_THINKING_TOKENS = 128
"""Gemini 2.5 Pro cannot stop thinking; 128 is the smallest budget it accepts."""
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"(\d{1,9})(?:\.(\d{1,9}))?s")
"""A protobuf Duration in JSON: whole seconds, optional fraction, `s` (bounded: linear)."""


def thinking_budget_for(model: str) -> int | None:
    """The thinking budget to send when none is configured: 0 (off) for Gemini 2.5 Flash and
    Flash-Lite, the least allowed for 2.5 Pro, and none for models that do not think (a
    budget sent to them is an error)."""
    name = model.removeprefix("models/").lower()
    if name.startswith("gemini-2.5-pro"):
        return PRO_MIN_THINKING_TOKENS
    if name.startswith("gemini-2.5-flash"):
        return 0
    return None


def retry_delay_seconds(body: str) -> float | None:
    """The `retryDelay` of a `google.rpc.RetryInfo` in an error body, in seconds, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    details = as_dict(as_dict(data).get("error")).get("details")
    for detail in as_list(details):
        detail = as_dict(detail)
        delay = detail.get("retryDelay")
        if detail.get("@type") == RETRY_INFO_TYPE and isinstance(delay, str):
            match = _DURATION.fullmatch(delay.strip())
            if match:
                whole, fraction = match.groups()
                return int(whole) + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
    return None


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

    @property
    def thinking_budget(self) -> int | None:
        """The `thinkingBudget` to send (None: send no `thinkingConfig`)."""
        configured = self.settings.thinking_budget
        return thinking_budget_for(self.model) if configured is None else configured

    def payload(self, request: LLMRequest) -> dict[str, Any]:
        generation: dict[str, Any] = {
            "maxOutputTokens": request.max_tokens or self.settings.max_tokens,
            "temperature": (
                request.temperature
                if request.temperature is not None
                else self.settings.temperature
            ),
        }
        if self.thinking_budget is not None:
            generation["thinkingConfig"] = {"thinkingBudget": self.thinking_budget}
        return {
            "systemInstruction": {"parts": [{"text": request.system}]},
            "contents": [
                {"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]}
                for role, text in merged_turns(request)
            ],
            "generationConfig": generation,
        }

    def completion_url(self) -> str:
        return f"{self.root}/v1beta/models/{self.model_path}:generateContent"

    def completion_payload(self, request: LLMRequest) -> dict[str, Any]:
        return self.payload(request)

    def read_completion(self, data: dict[str, Any]) -> Completion:
        if "error" in data and "candidates" not in data:
            raise self._embedded_error(data["error"])
        text, finish = self._candidate_text(data)
        if not text.strip():
            if finish == "MAX_TOKENS":
                raise self._out_of_tokens(data)
            raise self._error("empty", "response has no text content")
        prompt_tokens, completion_tokens = _usage(data)
        return Completion(text, data.get("modelVersion"), prompt_tokens, completion_tokens)

    def _out_of_tokens(self, data: dict[str, Any]) -> ProviderError:
        thoughts = int_or_none(as_dict(data.get("usageMetadata")).get("thoughtsTokenCount"))
        spent = f", {int(thoughts)} of them thinking" if thoughts else ""
        return self._error(
            "max_tokens",
            f"no answer within max_tokens (finish reason MAX_TOKENS{spent}): raise max_tokens "
            "or lower thinking_budget",
        )

    def _http_error(
        self, status: int, reason: str | None, body: str, headers: Any
    ) -> ProviderError:
        """As every format's, plus the retry delay a 429 names in its body (`RetryInfo`)."""
        error = super()._http_error(status, reason, body, headers)
        if status == 429 and error.retry_after_seconds is None:
            error.retry_after_seconds = retry_delay_seconds(body)
        return error

    async def stream(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> AsyncIterator[StreamItem]:
        url = f"{self.root}/v1beta/models/{self.model_path}:streamGenerateContent?alt=sse"
        usage: tuple[int | None, int | None] = (None, None)
        model: str | None = None
        finish: str | None = None
        answered = False
        last: dict[str, Any] = {}
        async with self._stream_response(
            session, url, self.payload(request), self.headers(), timeout_seconds
        ) as resp:
            async for event in self._sse(resp, timeout_seconds):
                data = self._json_object(event.data, "stream chunk")
                if "error" in data and "candidates" not in data:
                    raise self._embedded_error(data["error"])
                text, done = self._candidate_text(data)
                answered = answered or bool(text.strip())
                if text:
                    yield text
                if isinstance(data.get("usageMetadata"), dict):
                    usage, last = _usage(data), data
                if isinstance(data.get("modelVersion"), str):
                    model = data["modelVersion"]
                finish = finish or done
        if finish is None:
            raise self._error("stream_cut", "stream ended without a finishReason", retryable=True)
        if not answered and finish == "MAX_TOKENS":
            raise self._out_of_tokens(last)
        yield StreamUsage(usage[0], usage[1], model)

    def _candidate_text(self, data: dict[str, Any]) -> tuple[str, str | None]:
        """(text of the first candidate, the finishReason it carries, if any).

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
        if not finish:
            return text, None
        return text, finish if isinstance(finish, str) else "OTHER"


def _usage(data: dict[str, Any]) -> tuple[int | None, int | None]:
    """(prompt tokens, output tokens): the answer's and the thinking's, both billed as output."""
    meta = as_dict(data.get("usageMetadata"))
    answer = int_or_none(meta.get("candidatesTokenCount"))
    thoughts = int_or_none(meta.get("thoughtsTokenCount"))
    return int_or_none(meta.get("promptTokenCount")), _output_tokens(answer, thoughts)


def _output_tokens(answer: int | None, thoughts: int | None) -> int | None:
    """The answer's tokens plus the thinking's; a suspect count keeps its note in the sum."""
    if thoughts is None or answer is None:
        return answer if thoughts is None else thoughts
    counts = (answer, thoughts)
    notes = [c.note for c in counts if isinstance(c, SuspectCount)]
    if not notes:
        return int_or_none(answer + thoughts)  # a clamp beyond the per-call bound, if needed
    usable = [c.usable if isinstance(c, SuspectCount) else int(c) for c in counts]
    total = min(MAX_TOKENS_PER_CALL, sum(u or 0 for u in usable))
    return SuspectCount(total, "; ".join(notes))
