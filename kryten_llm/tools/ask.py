"""`kryten-llm ask "TEXT"`: one chat line through the bot, without a bus; the tuning loop.

Edit the personality, `ask`, read, repeat. The line goes through the real decision path
(`Pipeline.decide`: filters, triggers, the gates), the real prompt, the configured provider
chain (real calls: fallback, retries and breakers as in the service) and the real formatter,
validator and guard, exactly as a chat line from the bridge would. Nothing is posted and no
NATS server is needed: a recording sender takes the lines (refusing what `ChatSender` refuses)
and the records stay in memory (the service's response log is not touched).

It prints the lines the bot would post, or why it would not: the gate that held the line back
and its reason, the reply that failed (every provider failed, the validator or guard refused
it), or that the line triggers nothing (and why: no mention, a trigger word whose dice roll
said no, an ignored user, ...). `--show-prompt` prints every prompt sent to a model, as sent.

Each `ask` starts from an empty room: no history, no limits spent, no budget used.
Exit 0 when the bot would post, 1 when it would not, 2 for a bad config or channel.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from kryten_llm.config import (
    ChannelSettings,
    ConfigError,
    Settings,
    load_settings,
    missing_key_warnings,
)
from kryten_llm.daemon.service import configured_secrets
from kryten_llm.decide.filters import MessageFilter
from kryten_llm.decide.triggers import TriggerEngine
from kryten_llm.events import parse_chat
from kryten_llm.llm.manager import LLMManager, StreamHandle
from kryten_llm.logsetup import setup_logging
from kryten_llm.pipeline import Pipeline
from kryten_llm.redact import redact_text, set_secrets
from kryten_llm.reply.sender import unsafe_part
from kryten_llm.response_log import REPLY_OUTCOMES, ResponseLog, ResponseRecord
from kryten_llm.tools._tables import safe
from kryten_llm.tools.simulate import chat_payload, envelope
from kryten_llm.types import ChatLine, LLMRequest, LLMResult, channels_named

EXIT_REPLIED, EXIT_HELD, EXIT_USAGE = 0, 1, 2
DEFAULT_USER = "Tester"
HTTP_CONNECTIONS_MAX = 4
GATES: dict[str, str] = {
    "spam": "spam",
    "paused": "paused",
    "rate_limited": "rate limit",
    "loop_protection": "reply loop",
    "budget": "budget",
}
"""A hold's outcome -> the gate that gave it (decide/gates.py, in the pipeline's order)."""


class AskError(Exception):
    """A problem with the command line (an unknown channel)."""


class RecordingLLM(LLMManager):
    """The real LLM manager, which also keeps every request it is asked to answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest, preferred: str | None = None) -> LLMResult:
        self.requests.append(request)
        return await super().complete(request, preferred)

    def stream(self, request: LLMRequest, preferred: str | None = None) -> StreamHandle:
        self.requests.append(request)
        return super().stream(request, preferred)


class RecordingSender:
    """Posts nothing; keeps what would be posted, refusing what `ChatSender` refuses."""

    dry_run = True

    def __init__(self, command_prefixes: Sequence[str]) -> None:
        self.command_prefixes = list(command_prefixes)
        self.lines: list[str] = []

    async def send(self, to: ChatLine, parts: Sequence[str], correlation_id: str = "") -> list[str]:
        sent = [p for p in parts if not unsafe_part(p, self.command_prefixes)]
        self.lines += sent
        return sent


class RecordsInMemory(ResponseLog):
    """The response log's interface, keeping the records here instead of in a file."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.response_log.model_copy(update={"enabled": False}))
        self.records: list[ResponseRecord] = []

    def write(self, record: ResponseRecord) -> bool:
        self.records.append(record)
        return True


@dataclass
class Answer:
    """What became of the line: the record (if it triggered), the lines, the prompts."""

    channel: ChannelSettings
    username: str
    text: str
    record: ResponseRecord | None
    lines: list[str]
    prompts: list[LLMRequest] = field(default_factory=list)
    why_not: str = ""
    """Why the line triggered nothing, when it did not."""
    notes: list[str] = field(default_factory=list)
    """What the operator should know first (a provider whose key variable is unset)."""

    @property
    def replied(self) -> bool:
        record = self.record
        return record is not None and record.outcome in REPLY_OUTCOMES and bool(self.lines)


def pick_channel(settings: Settings, name: str | None) -> ChannelSettings:
    if name is None:
        return settings.channels[0]
    keys = channels_named(name, [c.key for c in settings.channels])
    if len(keys) != 1:
        known = ", ".join(str(c.key) for c in settings.channels)
        problem = "is on several domains: use domain/channel" if keys else "is not configured"
        raise AskError(f"channel {name!r} {problem} (configured: {known})")
    return next(c for c in settings.channels if c.key == keys[0])


def why_no_trigger(settings: Settings, pipeline: Pipeline, line: ChatLine) -> str:
    """Why a line left no record: it is filtered out, or nothing triggers (and how close)."""
    fresh = MessageFilter(settings.bot_names(), settings.listener.ignored_users, 0)
    reason = fresh.reason_to_ignore(line)
    if reason is None and pipeline.spam.is_other_bot(line.username):
        reason = "another bot (spam.other_bots)"
    if reason is not None:
        return f"not considered: {reason}"
    names = Pipeline._bot_names(settings)
    always = TriggerEngine(names, settings.triggers, _AlwaysFires())
    matched = always.evaluate(line.text)
    if matched is not None and matched.kind == "trigger_word":
        chance = always.settings_for(matched.name)
        percent = f"{chance.probability:.0%}" if chance else "its"
        return (
            f"trigger word {matched.name!r} matched, but its {percent} chance did not come up "
            "this time (ask again, or pass --seed to repeat a roll)"
        )
    shown = ", ".join(dict.fromkeys(safe(n) for n in names))
    return (
        f"nothing triggers: the line names none of the bot's names ({shown}) and matches "
        "no trigger word"
    )


class _AlwaysFires(random.Random):
    """A roll below every trigger's probability (0 included): to see what matched at all."""

    def random(self) -> float:
        return -1.0


async def ask(
    settings: Settings,
    text: str,
    username: str = DEFAULT_USER,
    channel: str | None = None,
    seed: int | None = None,
) -> Answer:
    """Run one chat line through the bot (see the module docstring)."""
    room = pick_channel(settings, channel)
    set_secrets(configured_secrets(settings))
    records = RecordsInMemory(settings)
    sender = RecordingSender(settings.message_processing.command_prefixes)
    connector = aiohttp.TCPConnector(limit=HTTP_CONNECTIONS_MAX)
    async with aiohttp.ClientSession(connector=connector) as session:
        llm = RecordingLLM(settings.llm_providers, settings.llm_manager, session)
        pipeline = Pipeline(
            settings,
            llm=llm,
            sender=sender,
            response_log=records,
            start_ms=0,
            rng=random.Random(seed),
        )
        payload = chat_payload(username, text)
        event = json.loads(envelope("chatMsg", payload, room.channel, room.domain))
        job = pipeline.decide("chatmsg", event)
        if job is not None:
            await pipeline.reply(job)
    record = records.records[-1] if records.records else None
    answer = Answer(room, username, text, record, sender.lines, llm.requests)
    answer.notes = missing_key_warnings(settings.llm_providers)
    if record is None:
        line = parse_chat(event, max_text_chars=settings.listener.max_chat_chars)
        answer.why_not = why_no_trigger(settings, pipeline, line)
    return answer


# --- the report ----------------------------------------------------------------------------


def format_prompt(request: LLMRequest, number: int, total: int) -> list[str]:
    title = "the prompt sent" if total == 1 else f"prompt {number} of {total} sent"
    lines = [f"--- {title} ---", "[system]", *request.system.splitlines()]
    for message in request.messages:
        lines += [f"[{message.role}]", *message.content.splitlines()]
    return [*lines, "--- end of prompt ---"]


def format_answer(answer: Answer, bot: str, show_prompt: bool) -> str:
    out = [f"note: {warning}" for warning in answer.notes]
    if show_prompt:
        for number, request in enumerate(answer.prompts, 1):
            out += format_prompt(request, number, len(answer.prompts))
        if not answer.prompts:
            out.append("(no prompt was sent: the line never reached a model)")
        out.append("")
    record = answer.record
    room = f"{answer.channel.domain}/{answer.channel.channel}"
    if record is None:
        out.append(f"{answer.why_not}.")
        return "\n".join(out) + "\n"
    kinds = {"mention": "a mention", "command": f"command {record.trigger_name!r}"}
    trigger = kinds.get(record.trigger_type, f"trigger {record.trigger_name!r}")
    if answer.replied:
        out += [f"<{safe(bot)}> {safe(line, 1000)}" for line in answer.lines]
        if record.provider is None:
            how = "answered without a model"
        else:
            tokens = f"{record.prompt_tokens or '?'}+{record.completion_tokens or '?'} tokens"
            latency = f"{record.latency_ms:.0f} ms" if record.latency_ms is not None else "? ms"
            how = f"{record.provider}/{record.model}, {latency}, {tokens}"
        out.append(f"({trigger} from {safe(answer.username)} in {room}; {how})")
    elif record.outcome in GATES:
        out.append(
            f"held back by the {GATES[record.outcome]} gate ({record.outcome}): "
            f"{safe(redact_text(record.reason), 300)}"
        )
    else:
        out.append(f"no reply ({record.outcome}): {safe(redact_text(record.reason), 300)}")
    return "\n".join(out) + "\n"


def run_ask(
    config: Path | None,
    text: str,
    username: str = DEFAULT_USER,
    channel: str | None = None,
    show_prompt: bool = False,
    seed: int | None = None,
    log_level: str | None = None,
    out: TextIO | None = None,
) -> int:
    """`kryten-llm ask`: print what the bot would say, or why not (see the module docstring)."""
    out = out or sys.stdout
    setup_logging(log_level or "ERROR")
    try:
        settings = load_settings(config)
        answer = asyncio.run(ask(settings, text, username, channel, seed))
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_USAGE
    except AskError as exc:
        print(f"kryten-llm ask: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out.write(format_answer(answer, answer.channel.username, show_prompt))
    return EXIT_REPLIED if answer.replied else EXIT_HELD


__all__ = ["Answer", "ask", "format_answer", "run_ask"]
