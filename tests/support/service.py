"""Run the real service in-process against the test nats-server and fake LLM."""

from __future__ import annotations

import copy
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kryten_llm.config import Settings, build_settings
from kryten_llm.daemon.service import LLMService

CHANNEL_A = "420Grindhouse"
CHANNEL_B = "Lounge"
DOMAIN_A = "cytu.be"
DOMAIN_B = "example.net"
BOT = "CynthiaRothbot"
API_KEY = "sk-test-DO-NOT-LEAK-1234567890"


LOOSE_LIMITS: dict[str, Any] = {
    "global_max_per_minute": 1000,
    "global_max_per_hour": 10000,
    "global_cooldown_seconds": 0,
    "user_max_per_hour": 1000,
    "user_cooldown_seconds": 0,
    "mention_cooldown_seconds": 0,
}
LOOSE_USER_LIMITS: dict[str, Any] = {
    "requests_per_minute": 0,
    "requests_per_hour": 0,
    "requests_per_day": 0,
    "tokens_per_day": 0,
}
LOOSE_SPAM: dict[str, Any] = {
    "flood_max_messages": 1000,
    "repeat_max_identical": 100,
    "mention_max": 100,
    "max_replies_per_window": 10000,
    "max_consecutive_replies_to_user": 1000,
    "max_chat_share": 1.0,
}


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
        # Limits and loop guards get their own tests; here they must not get in the way.
        "rate_limits": LOOSE_LIMITS,
        "spam": LOOSE_SPAM,
        "user_limits": LOOSE_USER_LIMITS,
        "metrics": {"port": 0},  # a free port: services in tests must not clash
        # Durable state is on, as in production, but each test's buckets are its own: the
        # session's server is shared, and one test's memories must not reach another's.
        "state": {"bucket_prefix": f"t{uuid.uuid4().hex[:12]}_"},
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
    """Settings for one test; the response log goes to a fresh temporary directory."""
    config = base_config(nats_url, llm_base_url)
    config["response_log"] = {"path": str(Path(tempfile.mkdtemp(prefix="kllm-log-")) / "r.jsonl")}
    return build_settings(merge(config, overrides), "test")


def read_records(settings: Settings) -> list[dict[str, Any]]:
    """Every JSONL record the service wrote (call after it stopped: close() flushes)."""
    path = settings.response_log.path
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[LLMService]:
    service = LLMService(settings, log_level="DEBUG")
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
