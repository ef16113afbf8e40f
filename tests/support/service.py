"""Run the real service in-process against the test nats-server and fake LLM."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kryten_llm.config import Settings, build_settings
from kryten_llm.service import LLMService

CHANNEL_A = "420Grindhouse"
CHANNEL_B = "Lounge"
DOMAIN_A = "cytu.be"
DOMAIN_B = "example.net"
BOT = "CynthiaRothbot"
API_KEY = "sk-test-DO-NOT-LEAK-1234567890"


def base_config(nats_url: str, llm_base_url: str) -> dict[str, Any]:
    """Two channels, one fake provider, and limits loose enough not to get in a test's way."""
    return {
        "nats": {"url": nats_url},
        "cytube": [
            {"domain": DOMAIN_A, "channel": CHANNEL_A, "username": BOT},
            {"domain": DOMAIN_B, "channel": CHANNEL_B, "username": BOT},
        ],
        "personality": {"character_name": BOT, "name_variations": ["cynthia"]},
        "llm_providers": {
            "fake": {
                "type": "openai_compatible",
                "base_url": llm_base_url,
                "model": "fake-model",
                "api_key": API_KEY,
                "timeout_seconds": 2,
            },
        },
        "message_processing": {
            "split_delay_seconds": 0,
            "send_burst": 20,
            "send_rate_per_second": 10,
        },
    }


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def make_settings(nats_url: str, llm_base_url: str, **overrides: Any) -> Settings:
    return build_settings(merge(base_config(nats_url, llm_base_url), overrides), "test")


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[LLMService]:
    service = LLMService(settings, log_level="DEBUG")
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
