"""`kryten-llm demo`: a private nats-server, the real service, and a scripted chat to watch.

It plays the Kryten bridge's part (publishing chat exactly as the bridge does and reading the
`say` commands the bot publishes back), so what you see is the production pipeline end to
end. The model is a real one when the environment names one, otherwise the offline Markov
stand-in, and the demo says which before it starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import nats

from kryten_llm.config import Settings, build_settings
from kryten_llm.daemon.service import LLMService
from kryten_llm.events import chat_subject
from kryten_llm.logsetup import apply_level
from kryten_llm.tools.natsd import start_nats_server
from kryten_llm.tools.offline import OfflineLLMServer
from kryten_llm.tools.simulate import chat_payload, envelope, media_payload

DEMO_DOMAIN = "demo.local"
DEMO_CHANNEL = "DemoTheater"
REPLY_WAIT_SECONDS = 30.0
PAUSE_BETWEEN_LINES_SECONDS = 0.6

# (username, text); "{bot}" is replaced by the bot's name. Lines naming the bot and chat
# commands (`!chat ...`) wait for the bot's answer.
SCRIPT: list[tuple[str, str]] = [
    ("Alice", "ok who is ready for some 90s kung fu cinema"),
    ("Bob", "{bot}, what do you think of this movie so far?"),
    ("Alice", "!chat remember Alice brought the extra-butter popcorn tonight"),
    ("Carol", "!chat recall popcorn"),
    ("Alice", "the dubbing is so bad it is great"),
    ("Carol", "hey {bot} any tips for surviving a warehouse fight?"),
    ("Bob", "lol the villain is explaining his whole plan again"),
    ("Dave", "{bot} rate that last kick out of ten"),
    ("Carol", "the soundtrack is pure synthesizer"),
    ("Alice", "{bot} would you have done that stunt yourself?"),
]


@dataclass(frozen=True)
class DemoModel:
    """Which model the demo talks to, and how to describe it to the person watching."""

    provider: dict[str, Any]
    description: str
    offline: bool = False


# (key variable, provider type, base URL, default model, who it is), in order of preference.
HOSTED_MODELS = (
    ("OPENAI_API_KEY", "openai_compatible", "https://api.openai.com/v1", "gpt-4o-mini", "OpenAI"),
    (
        "OPENROUTER_API_KEY",
        "openrouter",
        "https://openrouter.ai/api/v1",
        "openai/gpt-4o-mini",
        "OpenRouter",
    ),
    (
        "ANTHROPIC_API_KEY",
        "anthropic",
        "https://api.anthropic.com",
        "claude-3-5-haiku-latest",
        "Anthropic",
    ),
    (
        "GEMINI_API_KEY",
        "gemini",
        "https://generativelanguage.googleapis.com",
        "gemini-2.0-flash",
        "Google Gemini",
    ),
)


def choose_model(env: dict[str, str]) -> DemoModel:
    """A real model if the environment names one, otherwise the offline stand-in."""
    for key_env, kind, base_url, default_model, who in HOSTED_MODELS:
        if env.get(key_env):
            model = env.get("KRYTEN_LLM_DEMO_MODEL", default_model)
            provider = {"type": kind, "base_url": base_url, "model": model, "api_key_env": key_env}
            return DemoModel(provider, f"{who} ({key_env}), model {model}")
    ollama = env.get("OLLAMA_HOST") or env.get("OLLAMA_URL")
    if ollama:
        base = ollama if ollama.startswith(("http://", "https://")) else f"http://{ollama}"
        model = env.get("OLLAMA_MODEL", "llama3.2")
        return DemoModel(
            {"type": "ollama", "base_url": base, "model": model},
            f"Ollama at {base} (model {model})",
        )
    return DemoModel(
        {"type": "openai_compatible", "base_url": "http://127.0.0.1:1/v1", "model": "offline"},
        "no API key or Ollama URL in the environment, so the offline stand-in: a Markov chain "
        "(markovify) built from a small bundled corpus and the chat itself, served on loopback "
        "as an OpenAI-compatible endpoint. It babbles; set OPENAI_API_KEY, OPENROUTER_API_KEY, "
        "ANTHROPIC_API_KEY, GEMINI_API_KEY or OLLAMA_HOST for a real model.",
        offline=True,
    )


def demo_settings(base: Settings, nats_url: str, provider: dict[str, Any]) -> Settings:
    """The operator's personality and triggers, with the demo's bus, channel and loose limits."""
    data = base.model_dump(mode="json", exclude={"nats", "cytube", "llm_providers"})
    data.update(
        {
            "nats": {"url": nats_url},
            "cytube": {
                "domain": DEMO_DOMAIN,
                "channel": DEMO_CHANNEL,
                "username": base.personality.character_name,
            },
            "llm_providers": {"demo": provider},
        }
    )
    data["rate_limits"] = {
        **data.get("rate_limits", {}),
        "global_max_per_minute": 30,
        "global_cooldown_seconds": 0,
        "user_cooldown_seconds": 0,
        "mention_cooldown_seconds": 0,
    }
    data["metrics"] = {**data.get("metrics", {}), "port": 0}  # never clash with a real bot
    data["message_processing"] = {**data.get("message_processing", {}), "split_delay_seconds": 0.3}
    return build_settings(data, "(demo)")


class Transcript:
    """Prints the chat as a person in the channel would see it."""

    def __init__(self, out: TextIO, bot: str) -> None:
        self.out = out
        self.bot = bot
        self.replies = 0
        self.replied = asyncio.Event()

    def line(self, who: str, text: str) -> None:
        print(f"  <{who}> {text}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"[demo] {text}", file=self.out, flush=True)

    async def on_command(self, msg: Any) -> None:
        try:
            command = json.loads(msg.data)
        except ValueError:
            return
        if command.get("command") == "say":
            self.line(self.bot, command.get("args", {}).get("message", ""))
            self.replies += 1
            self.replied.set()


async def _play_script(nc: Any, transcript: Transcript, bot: str, lines: int) -> None:
    subject = chat_subject(DEMO_CHANNEL, "chatMsg")
    title = "Lady Dragon (1992)"
    await nc.publish(
        chat_subject(DEMO_CHANNEL, "changeMedia"),
        envelope("changeMedia", media_payload(title), DEMO_CHANNEL, DEMO_DOMAIN),
    )
    transcript.note(f"now playing: {title}")
    # The user list the bridge sends on join: ranks (registered users may store memories).
    users = [{"name": name, "rank": 1, "meta": {}} for name in sorted({u for u, _ in SCRIPT})]
    await nc.publish(
        chat_subject(DEMO_CHANNEL, "userlist"),
        envelope("userlist", users, DEMO_CHANNEL, DEMO_DOMAIN),
    )
    for user, template in SCRIPT[:lines]:
        text = template.format(bot=bot)
        transcript.replied.clear()
        await nc.publish(
            subject, envelope("chatMsg", chat_payload(user, text), DEMO_CHANNEL, DEMO_DOMAIN)
        )
        transcript.line(user, text)
        if "{bot}" in template or template.startswith("!chat"):
            try:
                await asyncio.wait_for(transcript.replied.wait(), REPLY_WAIT_SECONDS)
                await asyncio.sleep(PAUSE_BETWEEN_LINES_SECONDS)  # let any later parts land
            except TimeoutError:
                transcript.note("(no reply: see the log lines above for why)")
        else:
            await asyncio.sleep(PAUSE_BETWEEN_LINES_SECONDS)


async def _wait_forever() -> None:
    """Until cancelled (Ctrl-C): the demo's bus and bot keep serving meanwhile."""
    await asyncio.Event().wait()


async def run_demo(
    base: Settings,
    log_level: str,
    lines: int = len(SCRIPT),
    out: TextIO = sys.stdout,
    stay: bool = False,
) -> int:
    """Run the whole demo; the exit status for the CLI."""
    model = choose_model(dict(os.environ))
    bot = base.personality.character_name
    transcript = Transcript(out, bot)
    transcript.note(f"LLM: {model.description}")
    try:
        server = await asyncio.to_thread(start_nats_server)
    except RuntimeError as exc:
        transcript.note(f"cannot start the bundled nats-server: {exc}")
        return 1
    offline = await OfflineLLMServer().start() if model.offline else None
    provider = dict(model.provider)
    if offline is not None:
        provider["base_url"] = offline.base_url
    transcript.note(f"nats-server on {server.url}; channel {DEMO_DOMAIN}/{DEMO_CHANNEL}")
    service = LLMService(demo_settings(base, server.url, provider), log_level)
    nc = None
    try:
        await service.start()
        apply_level(log_level)
        nc = await nats.connect(server.url)
        await nc.subscribe("kryten.robot.command", cb=transcript.on_command)
        await _play_script(nc, transcript, bot, max(1, min(lines, len(SCRIPT))))
        transcript.note(f"done: the bot sent {transcript.replies} chat line(s)")
        if stay:  # the bus stays up for `nats req` against the API (docs/API.md)
            transcript.note(f"still serving on {server.url} (the API too); Ctrl-C stops")
            await _wait_forever()
        return 0 if transcript.replies else 1
    finally:
        if nc is not None:
            await nc.close()
        await service.stop()
        if offline is not None:
            await offline.stop()
        await asyncio.to_thread(server.stop)
