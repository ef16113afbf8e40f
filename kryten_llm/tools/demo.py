"""`kryten-llm demo`: a private nats-server, the real service, and a scripted chat to watch.

It plays the Kryten bridge's part (publishing chat exactly as the bridge does and reading the
`say` commands the bot publishes back), so what you see is the production pipeline end to
end. The model is a real one when the environment names one, otherwise the offline Markov
stand-in, and the demo says which before it starts.

`kryten-llm --config FILE demo` runs the operator's own personality, triggers and policy: the
demo substitutes its own bus, channel and response log, keeps each provider that has a key and
answers for every other one with the offline stand-in under the provider's own name, so a
trigger's `provider`, `usage.cheaper_provider` and every `fallback` still resolve.

Everything it starts (nats-server, the stand-in, the service) has its stop on one exit stack
from the moment it starts, the nats-server's even while it is still starting, and SIGTERM
cancels the demo as Ctrl-C does: no exit, by error or signal, leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nats

from kryten_llm.config import ChannelSettings, NatsSettings, ProviderSettings, Settings
from kryten_llm.daemon.service import LLMService
from kryten_llm.events import chat_subject
from kryten_llm.logsetup import apply_level
from kryten_llm.redact import redact_text
from kryten_llm.tools.natsd import NatsServer, start_nats_server
from kryten_llm.tools.offline import MODEL_NAME, OfflineLLMServer
from kryten_llm.tools.simulate import chat_payload, envelope, media_payload

log = logging.getLogger(__name__)

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


OFFLINE_MODEL = DemoModel(
    {"type": "openai_compatible", "base_url": "http://127.0.0.1:1/v1", "model": MODEL_NAME},
    "providers without a key are answered by the offline stand-in: a Markov chain "
    "(markovify) built from a small bundled corpus and the chat itself, served on loopback "
    "as an OpenAI-compatible endpoint. It babbles; set a provider's key for a real model.",
    offline=True,
)
"""The stand-in for providers without a key (its base URL is set once its server runs)."""


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


def stand_in_for(provider: ProviderSettings, stand_in: dict[str, Any]) -> ProviderSettings:
    """`provider` answered by the stand-in model, keeping its place in every chain.

    Its name, enabled flag, priority and fallbacks stay, so triggers that prefer it, the
    budget's cheaper provider and other providers' fallbacks still name it.
    """
    return ProviderSettings(
        **stand_in,
        enabled=provider.enabled,
        priority=provider.priority,
        fallback=provider.fallback,
    )


def demo_providers(
    base: Settings, stand_in: dict[str, Any], keep_keyed: bool
) -> tuple[dict[str, ProviderSettings], list[str]]:
    """Every configured provider under its own name, and a line on what answers for each.

    With `keep_keyed` (the operator's own config), a provider with a key to send stays as
    configured and every other one is answered by the stand-in; without it (the embedded
    defaults), the stand-in answers for all of them.
    """
    providers: dict[str, ProviderSettings] = {}
    notes: list[str] = []
    for name, provider in base.llm_providers.items():
        key = provider.key_status()
        if keep_keyed and key.present:
            providers[name] = provider
            notes.append(f"{name}: {provider.type} {provider.model} (key {key.describe()})")
            continue
        providers[name] = stand_in_for(provider, stand_in)
        why = f"its key variable {key.variable} is not set" if key.missing else "no API key"
        notes.append(f"{name}: the stand-in ({why})" if keep_keyed else f"{name}: the stand-in")
    return providers, notes


def demo_settings(
    base: Settings, nats_url: str, providers: dict[str, ProviderSettings], log_dir: Path
) -> Settings:
    """The operator's personality, triggers and policy, with the demo's bus, channel, models,
    a response log in `log_dir`, no metrics port to clash with, and loose limits.

    Built with `model_copy` from parts that are each valid already: validating the whole
    again would apply the `KRYTEN_LLM_*` environment on top, and could point the demo at
    the operator's real bus.
    """
    return base.model_copy(
        update={
            "nats": NatsSettings(url=nats_url),
            "cytube": [
                ChannelSettings(
                    domain=DEMO_DOMAIN,
                    channel=DEMO_CHANNEL,
                    username=base.personality.character_name,
                )
            ],
            "llm_providers": providers,
            "rate_limits": base.rate_limits.model_copy(
                update={
                    "global_max_per_minute": 30,
                    "global_cooldown_seconds": 0,
                    "user_cooldown_seconds": 0,
                    "mention_cooldown_seconds": 0,
                }
            ),
            "metrics": base.metrics.model_copy(update={"port": 0}),
            "message_processing": base.message_processing.model_copy(
                update={"split_delay_seconds": 0.3}
            ),
            "response_log": base.response_log.model_copy(
                update={"path": log_dir / "responses.jsonl"}
            ),
        }
    )


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


async def _start_bus(stack: contextlib.AsyncExitStack) -> NatsServer:
    """Start the private nats-server with its stop already on `stack`.

    The server starts in a thread; if the demo is cancelled (Ctrl-C, SIGTERM) or fails while
    it starts, the stop still waits for that start to finish and ends what it started, so no
    exit leaves a nats-server behind.
    """
    starting = asyncio.ensure_future(asyncio.to_thread(start_nats_server))

    async def stop() -> None:
        try:
            server = await starting
        except Exception:  # it never started, so there is nothing to stop
            return
        await asyncio.to_thread(server.stop)

    stack.push_async_callback(stop)
    return await asyncio.shield(starting)


def _catch_sigterm(task: asyncio.Task[Any] | None, caught: list[int]) -> Callable[[], None]:
    """Install a SIGTERM handler that cancels the demo (as Ctrl-C does); returns its removal."""
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        caught.append(signal.SIGTERM)
        if task is not None:
            task.cancel()

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGTERM)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        return lambda: None
    return restore


async def _wait_forever() -> None:
    """Until cancelled (Ctrl-C): the demo's bus and bot keep serving meanwhile."""
    await asyncio.Event().wait()


async def run_demo(
    base: Settings,
    log_level: str,
    lines: int = len(SCRIPT),
    out: TextIO = sys.stdout,
    config_path: Path | None = None,
    stay: bool = False,
) -> int:
    """Run the whole demo; the exit status for the CLI (128 + the signal when stopped by one).

    With `config_path` (the operator's own config) the demo keeps its personality, triggers
    and policy and every provider that has a key; the others are answered by the offline
    stand-in. Without one, the environment chooses the model (`choose_model`).
    """
    caught: list[int] = []
    restore = _catch_sigterm(asyncio.current_task(), caught)
    transcript = Transcript(out, base.personality.character_name)
    try:
        return await _demo(base, log_level, lines, transcript, config_path, stay)
    except asyncio.CancelledError:
        signum = caught[0] if caught else signal.SIGINT
        transcript.note(f"stopped by {signal.Signals(signum).name}; everything it started is gone")
        return 128 + signum
    except Exception as exc:  # everything it started is stopped by now; say what failed
        log.debug("the demo failed", exc_info=True)
        transcript.note(f"failed: {type(exc).__name__}: {redact_text(str(exc))}")
        return 1
    finally:
        restore()


async def _demo(
    base: Settings,
    log_level: str,
    lines: int,
    transcript: Transcript,
    config_path: Path | None,
    stay: bool = False,
) -> int:
    bot = base.personality.character_name
    model = OFFLINE_MODEL if config_path is not None else choose_model(dict(os.environ))
    async with contextlib.AsyncExitStack() as stack:
        stand_in = dict(model.provider)
        if model.offline:
            offline = await OfflineLLMServer().start()
            stack.push_async_callback(offline.stop)
            stand_in["base_url"] = offline.base_url
        providers, notes = demo_providers(base, stand_in, keep_keyed=config_path is not None)
        transcript.note(f"LLM: {model.description}")
        for note in notes:
            transcript.note(f"  {note}")
        try:
            server = await _start_bus(stack)
        except RuntimeError as exc:
            transcript.note(f"cannot start the bundled nats-server: {exc}")
            return 1
        log_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="kryten-llm-demo-"))
        stack.push_async_callback(asyncio.to_thread, shutil.rmtree, log_dir, True)
        transcript.note(f"nats-server on {server.url}; channel {DEMO_DOMAIN}/{DEMO_CHANNEL}")
        service = LLMService(demo_settings(base, server.url, providers, log_dir), log_level)
        stack.push_async_callback(service.stop)
        await service.start()
        apply_level(log_level)
        nc = await nats.connect(server.url)
        stack.push_async_callback(nc.close)
        await nc.subscribe("kryten.robot.command", cb=transcript.on_command)
        await _play_script(nc, transcript, bot, max(1, min(lines, len(SCRIPT))))
        transcript.note(f"done: the bot sent {transcript.replies} chat line(s)")
        if stay:  # the bus stays up for `nats req` against the API (docs/API.md)
            transcript.note(f"still serving on {server.url} (the API too); Ctrl-C stops")
            await _wait_forever()
        return 0 if transcript.replies else 1
