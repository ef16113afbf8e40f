"""OpenRouter: the OpenAI wire format at https://openrouter.ai/api/v1, plus attribution headers.

OpenRouter may put an `error` object inside a 200 response or a stream chunk (an upstream
failure), and sends `: OPENROUTER PROCESSING` SSE comments while waiting; the OpenAI-compatible
parsing already handles both.
"""

from __future__ import annotations

from kryten_llm.llm.providers.openai_compatible import OpenAICompatibleProvider


class OpenRouterProvider(OpenAICompatibleProvider):
    """OpenAI-compatible, with the optional `HTTP-Referer` and `X-Title` app headers."""

    @property
    def reasoning(self) -> bool:
        """`max_tokens` unless told otherwise: OpenRouter maps it onto each model's own limit
        (an OpenAI reasoning model's `max_completion_tokens` included)."""
        return bool(self.settings.reasoning_model)

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        if self.settings.http_referer:
            headers["HTTP-Referer"] = self.settings.http_referer
        if self.settings.x_title:
            headers["X-Title"] = self.settings.x_title
        return headers
