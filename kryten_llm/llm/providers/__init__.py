"""LLM providers: one module per wire format, all behind `Provider.complete` / `stream`."""

from __future__ import annotations

from kryten_llm.config import ProviderSettings
from kryten_llm.llm.providers.anthropic import AnthropicProvider
from kryten_llm.llm.providers.base import Provider, ProviderError, StreamItem, StreamUsage
from kryten_llm.llm.providers.gemini import GeminiProvider
from kryten_llm.llm.providers.ollama import OllamaProvider
from kryten_llm.llm.providers.openai_compatible import OpenAICompatibleProvider
from kryten_llm.llm.providers.openrouter import OpenRouterProvider

__all__ = [
    "Provider",
    "ProviderError",
    "StreamItem",
    "StreamUsage",
    "build_provider",
]

_PROVIDER_CLASSES: dict[str, type[Provider]] = {
    "openai_compatible": OpenAICompatibleProvider,
    "openrouter": OpenRouterProvider,
    "ollama": OllamaProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}


def build_provider(name: str, settings: ProviderSettings) -> Provider:
    """The provider object for one `llm_providers` entry."""
    cls = _PROVIDER_CLASSES.get(settings.type)
    if cls is None:
        raise ValueError(f"provider {name!r}: type {settings.type!r} is not implemented")
    return cls(name, settings)
