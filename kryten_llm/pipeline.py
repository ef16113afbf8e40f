"""The per-message flow, one way: event -> decision -> prompt -> reply -> log.

`decide()` is synchronous and cheap: the dispatcher calls it for every event, in order, so
history and limits see chat exactly as it happened. It returns a `ReplyJob` only when the bot
should speak. `reply()` is the slow part (the LLM) and runs in a worker, many at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kryten_llm.config import ChannelSettings, Settings
from kryten_llm.context import ContextManager, ContextSnapshot
from kryten_llm.events import MalformedEvent, parse_chat, parse_media
from kryten_llm.filters import MessageFilter
from kryten_llm.formatter import ResponseFormatter
from kryten_llm.guard import OutputGuard
from kryten_llm.llm_manager import LLMManager, LLMUnavailable
from kryten_llm.prompts import PromptBuilder
from kryten_llm.sender import ChatSender
from kryten_llm.triggers import TriggerEngine
from kryten_llm.types import ChatLine, Trigger

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplyJob:
    """Everything a worker needs to answer one message, fixed at decision time."""

    line: ChatLine
    trigger: Trigger
    snapshot: ContextSnapshot
    channel: ChannelSettings
    correlation_id: str
    decided_monotonic: float = field(default_factory=time.monotonic)


class Pipeline:
    """Owns the stages; the service only feeds it events and runs its workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        llm: LLMManager,
        sender: ChatSender,
        start_ms: int,
        trigger_engine: TriggerEngine | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.sender = sender
        self.filter = MessageFilter(settings.bot_names(), settings.listener.ignored_users, start_ms)
        self.triggers = trigger_engine or self._trigger_engine(settings)
        self.context = ContextManager(settings.context)
        self.prompts = PromptBuilder(settings.personality, settings.context)
        self.formatter = ResponseFormatter(settings.message_processing, settings.personality)
        self.guard = OutputGuard(settings.message_processing, settings.safety)
        self._channels = {(c.domain, c.channel.lower()): c for c in settings.channels}

    @staticmethod
    def _trigger_engine(settings: Settings) -> TriggerEngine:
        names = [settings.personality.character_name, *settings.personality.name_variations]
        names += [c.username for c in settings.channels]
        return TriggerEngine(names, settings.triggers)

    # --- decision (synchronous, in event order) ----------------------------------------

    def decide(self, event_name: str, envelope: dict[str, Any]) -> ReplyJob | None:
        """Update memory from one event and return a job if the bot should answer it."""
        channel = self._channels.get((envelope["domain"], envelope["channel"].lower()))
        if channel is None:
            log.debug(
                "event for unconfigured channel %s/%s ignored",
                envelope["domain"],
                envelope["channel"],
            )
            return None
        try:
            if event_name == "changemedia":
                self.context.set_video(parse_media(envelope))
                return None
            if event_name == "chatmsg":
                return self._decide_chat(parse_chat(envelope), channel)
        except MalformedEvent as exc:
            log.warning(
                "malformed %s event on %s ignored: %s", event_name, envelope["channel"], exc
            )
        return None

    def _decide_chat(self, line: ChatLine, channel: ChannelSettings) -> ReplyJob | None:
        reason = self.filter.reason_to_ignore(line)
        if reason in ("server notice", "shadow-muted sender", "blank message"):
            return None  # never part of the room's visible conversation
        snapshot = self.context.snapshot(line.channel, line.username)
        self.context.add_chat(line)
        if reason is not None:
            log.debug("not answering %s in %s: %s", line.username, line.channel, reason)
            return None
        trigger = self.triggers.evaluate(line.text)
        if trigger is None:
            return None
        correlation_id = line.correlation_id or str(uuid.uuid4())
        log.info("%s from %s in %s [%s]", trigger.kind, line.username, line.channel, correlation_id)
        return ReplyJob(line, trigger, snapshot, channel, correlation_id)

    # --- reply (asynchronous, concurrent) ----------------------------------------------

    async def reply(self, job: ReplyJob) -> list[str]:
        """Ask the LLM, shape and guard the answer, send it; return the parts published."""
        request = self.prompts.build(job.line.username, job.trigger, job.snapshot)
        try:
            result = await self.llm.complete(request, preferred=job.trigger.provider)
        except LLMUnavailable as exc:
            log.warning(
                "no reply to %s in %s [%s]: LLM unavailable: %s",
                job.line.username,
                job.line.channel,
                job.correlation_id,
                exc.reason,
            )
            return []
        verdict = self.guard.check(self.formatter.format(result.text))
        for decision in verdict.decisions:
            log.info("guard %s: %s [%s]", decision.action, decision.reason, job.correlation_id)
        if verdict.blocked or not verdict.parts:
            log.warning(
                "reply to %s in %s [%s] withheld by the output guard",
                job.line.username,
                job.line.channel,
                job.correlation_id,
            )
            return []
        sent = await self.sender.send(
            job.line.channel, job.line.domain, verdict.parts, job.correlation_id
        )
        if sent:
            reply_text = " ".join(sent)
            if self.sender.dry_run:  # live lines come back from the bridge as chatMsg
                self.context.add_bot_line(job.line.channel, job.channel.username, reply_text)
            self.context.add_exchange(
                job.line.channel, job.line.username, job.trigger.message, reply_text
            )
        return sent
