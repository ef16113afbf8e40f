"""The per-message flow, one way: event -> decision -> prompt -> reply -> log.

`decide()` is synchronous and cheap: the dispatcher calls it for every event, in order, so
history, ranks, spam counters and limits see chat exactly as it happened. When a trigger is
allowed to speak, its limits are spent right there (not after the LLM answers), so a burst of
mentions cannot all slip past a limit while their replies are still being written; and dry
run spends them exactly as a live run does, so a dry run predicts a live run.

`reply()` is the slow part (the LLM) and runs in a worker, many at once; `responder.py`
streams the answer into chat. Every triggered message ends in exactly one JSONL record,
whatever became of it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kryten_llm.config import ChannelSettings, Settings
from kryten_llm.context import ContextManager, ContextSnapshot
from kryten_llm.decide.budget import UsageTracker
from kryten_llm.decide.filters import MessageFilter
from kryten_llm.decide.limits import RateLimiter
from kryten_llm.decide.ranks import RankRegistry
from kryten_llm.decide.spam import SpamGuard
from kryten_llm.decide.triggers import TriggerEngine
from kryten_llm.events import MalformedEvent, MalformedEvents, parse_chat, parse_media
from kryten_llm.llm.manager import LLMManager
from kryten_llm.logsetup import correlation_id
from kryten_llm.ops.metrics import Metrics
from kryten_llm.reply.formatter import ResponseFormatter
from kryten_llm.reply.guard import OutputGuard
from kryten_llm.reply.prompts import PromptBuilder
from kryten_llm.reply.responder import Responder
from kryten_llm.reply.sender import Sender
from kryten_llm.reply.validator import ReplyValidator
from kryten_llm.response_log import ResponseLog, ResponseRecord
from kryten_llm.types import Attempt, ChatLine, LLMRequest, LLMResult, Trigger

log = logging.getLogger(__name__)

RANK_EVENTS = frozenset({"adduser", "userlist", "setuserrank", "userleave"})
INVISIBLE = frozenset({"server notice", "shadow-muted sender", "blank message"})
"""Lines that are not part of the room's visible conversation: not even remembered."""


def usage_summary(result: LLMResult | None) -> str:
    """Provider, model, LLM time and tokens of a reply, for the log line that reports it."""
    if result is None:
        return "no LLM result"
    tokens = f"{result.prompt_tokens or '?'}+{result.completion_tokens or '?'} tokens"
    return f"{result.provider}/{result.model}, LLM {result.latency_ms:.0f} ms, {tokens}"


class EventClock:
    """Time read from the chat itself (each line's CyTube timestamp), for replay and tests.

    With it, every decision depends only on the transcript and the seed, so a replay and a
    live run over the same chat decide the same.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, line: ChatLine) -> None:
        self.now = max(self.now, line.time_ms / 1000.0)


@dataclass(frozen=True, slots=True)
class ReplyJob:
    """Everything a worker needs to answer one message, fixed at decision time."""

    line: ChatLine
    trigger: Trigger
    snapshot: ContextSnapshot
    channel: ChannelSettings
    correlation_id: str
    rank: float = 0.0
    provider: str | None = None
    """The trigger's provider, or the cheaper one a spent budget switched to."""
    decided_monotonic: float = field(default_factory=time.monotonic)


class Pipeline:
    """Owns the stages; the service only feeds it events and runs its workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        llm: LLMManager,
        sender: Sender,
        response_log: ResponseLog,
        start_ms: int,
        usage: UsageTracker | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.llm = llm
        self.sender = sender
        self.response_log = response_log
        self.usage = usage or UsageTracker(settings.usage, settings.llm_providers)
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.rng = rng or random.Random()
        self.paused: set[str] = set()
        """Lowercased channel names the operator paused: heard and remembered, not answered."""
        self.ranks = RankRegistry()
        self.malformed = MalformedEvents()
        self.filter = MessageFilter(settings.bot_names(), settings.listener.ignored_users, start_ms)
        self.context = ContextManager(settings.context)
        self.limiter = RateLimiter(settings.rate_limits, clock=clock)
        self.spam = SpamGuard(settings.spam, settings.rate_limits.admin_min_rank, clock=clock)
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """(Re)configure every stage; memory, limit history and penalties carry over.

        Everything that can fail (patterns, prompt file) is built first and only then swapped
        in, so a reload either applies completely or not at all.
        """
        triggers = TriggerEngine(self._bot_names(settings), settings.triggers, self.rng)
        prompts = PromptBuilder(settings.personality, settings.context)
        formatter = ResponseFormatter(settings.message_processing, settings.personality)
        guard = OutputGuard(settings.message_processing, settings.safety)
        previous: Settings | None = getattr(self, "settings", None)
        old_validator: ReplyValidator | None = getattr(self, "validator", None)
        keep = previous is not None and previous.validation == settings.validation
        validator = old_validator if keep and old_validator else ReplyValidator(settings.validation)
        processing = settings.message_processing
        self.responder = Responder(
            self.llm,
            formatter,
            guard,
            validator,
            processing.max_message_length,
            processing.max_parts,
        )
        self.settings = settings
        self.triggers, self.prompts, self.validator = triggers, prompts, validator
        self.filter.reconfigure(settings.bot_names(), settings.listener.ignored_users)
        self.context.reconfigure(settings.context)
        self.limiter.reconfigure(settings.rate_limits)
        self.spam.reconfigure(settings.spam, settings.rate_limits.admin_min_rank)
        self.usage.reconfigure(settings.usage, settings.llm_providers)
        self._channels = {(c.domain, c.channel.lower()): c for c in settings.channels}

    @staticmethod
    def _bot_names(settings: Settings) -> list[str]:
        names = [settings.personality.character_name, *settings.personality.name_variations]
        return names + [c.username for c in settings.channels]

    @property
    def dry_run(self) -> bool:
        return self.sender.dry_run

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
            if event_name == "chatmsg":
                limit = self.settings.listener.max_chat_chars
                return self._decide_chat(parse_chat(envelope, max_text_chars=limit), channel)
            if event_name == "changemedia":
                self.context.set_video(parse_media(envelope))
            elif event_name in RANK_EVENTS:
                self.ranks.apply_event(channel.channel, event_name, envelope.get("payload"))
        except MalformedEvent as exc:
            self.malformed.note(f"{event_name} event on {envelope['channel']}", str(exc))
        return None

    def _decide_chat(self, line: ChatLine, channel: ChannelSettings) -> ReplyJob | None:
        if isinstance(self.clock, EventClock):
            self.clock.advance(line)
        self.metrics.message_seen()
        reason = self.filter.reason_to_ignore(line)
        if reason in INVISIBLE:
            return None
        if reason is None and self.spam.is_other_bot(line.username):
            reason = "another bot"
        trigger = self.triggers.evaluate(line.text) if reason is None else None
        # The room as it was before this line, copied only for the lines that may be answered.
        snapshot = self.context.snapshot(line.channel, line.username) if trigger else None
        self.context.add_chat(line)
        self.spam.note_chat_line(line.channel, line.username, is_bot=self.filter.is_own(line))
        if reason is not None:
            log.debug("not answering %s in %s: %s", line.username, line.channel, reason)
            return None
        rank = self.ranks.rank_of(line.channel, line.username)
        is_mention = trigger is not None and trigger.kind == "mention"
        verdict = self.spam.observe(line.channel, line.username, rank, line.text, is_mention)
        if trigger is None or snapshot is None:
            log.debug("no trigger in the line from %s in %s", line.username, line.channel)
            return None
        self.metrics.triggered(trigger.kind)
        cid = line.correlation_id or str(uuid.uuid4())
        correlation_id.set(cid)  # for the log lines below; the dispatcher resets it
        job = ReplyJob(
            line,
            trigger,
            snapshot,
            channel,
            cid,
            rank,
            trigger.provider,
        )
        held = ("spam", verdict.reason) if verdict.is_spam else self._held_back(job)
        if held is None:
            budget = self.usage.allow(line.channel, line.username)
            if not budget.allowed:
                held = ("budget", budget.reason)
            elif budget.provider:
                job = dataclasses.replace(job, provider=budget.provider)
        if held is not None:
            log.info(
                "holding back %s from %s in %s: %s (%s)",
                trigger.kind,
                line.username,
                line.channel,
                held[0],
                held[1],
            )
            self._log(job, *held)
            return None
        self._spend(job)
        log.info(
            "%s %r from %s in %s: answering",
            trigger.kind,
            trigger.name,
            line.username,
            line.channel,
        )
        return job

    def _trigger_limits(self, trigger: Trigger) -> tuple[float | None, int | None]:
        settings = self.triggers.settings_for(trigger.name) if trigger.kind != "mention" else None
        if settings is None:
            return None, None
        return settings.cooldown_seconds, settings.max_responses_per_hour

    def _held_back(self, job: ReplyJob) -> tuple[str, str] | None:
        """(outcome, reason) if the channel is paused or a limit or loop guard says not now."""
        line, trigger = job.line, job.trigger
        if line.channel.lower() in self.paused:
            return "paused", "channel paused by the operator"
        cooldown, per_hour = self._trigger_limits(trigger)
        decision = self.limiter.check(
            line.channel, line.username, job.rank, trigger.kind, trigger.name, cooldown, per_hour
        )
        if not decision.allowed:
            return "rate_limited", f"{decision.reason}: {decision.detail}"
        reply_ok = self.spam.check_reply(line.channel, line.username)
        if not reply_ok.allowed:
            return "loop_protection", f"{reply_ok.reason}: {reply_ok.detail}"
        return None

    def _spend(self, job: ReplyJob) -> None:
        line, trigger = job.line, job.trigger
        cooldown, per_hour = self._trigger_limits(trigger)
        self.limiter.record(
            line.channel, line.username, job.rank, trigger.kind, trigger.name, cooldown, per_hour
        )
        self.spam.record_reply(line.channel, line.username, parts=1)

    # --- reply (asynchronous, concurrent) ----------------------------------------------

    async def reply(self, job: ReplyJob) -> list[str]:
        """Ask the LLM, stream the answer into chat through the checks; return what was sent."""
        request = self.prompts.build(job.line.username, job.trigger, job.snapshot)
        line = job.line
        first_sent: list[float] = []

        async def send(parts: list[str]) -> list[str]:
            sent = await self.sender.send(line.channel, line.domain, parts, job.correlation_id)
            if sent and not first_sent:
                first_sent.append(time.monotonic())
            return sent

        outcome = await self.responder.respond(
            request, job.provider, line.channel, job.trigger.message, send
        )
        cost = self._account(job, outcome.result, request)
        self.metrics.llm_attempts(outcome.attempts)
        if outcome.sent:
            self._after_send(job, outcome.sent, outcome.result, first_sent[0])
        else:
            log.warning(
                "no reply to %s in %s: %s: %s",
                line.username,
                line.channel,
                outcome.outcome,
                outcome.reason,
            )
        final = ("dry_run" if self.dry_run else "sent") if outcome.sent else outcome.outcome
        self._log(
            job,
            final,
            outcome.reason,
            outcome.result,
            attempts=outcome.attempts,
            parts=tuple(outcome.sent),
            cost_usd=cost,
        )
        return outcome.sent

    def _account(
        self, job: ReplyJob, result: LLMResult | None, request: LLMRequest
    ) -> float | None:
        """Tokens and cost of a reply (budget events fire from here)."""
        if result is None:
            return None
        cost = self.usage.record(result, job.line.channel, job.line.username, request=request)
        self.metrics.tokens(result.provider, result.prompt_tokens, result.completion_tokens)
        self.metrics.cost(cost.usd)
        return cost.usd

    def _after_send(
        self, job: ReplyJob, sent: list[str], result: LLMResult | None, first_sent_at: float
    ) -> None:
        reply_text = " ".join(sent)
        log.info(
            "replied to %s in %s: %d line(s); %s",
            job.line.username,
            job.line.channel,
            len(sent),
            usage_summary(result),
        )
        if not self.dry_run:
            self.metrics.sent(len(sent))
        if result is not None and result.latency_ms is not None:
            # Overhead: message received to first line published, minus the LLM's own time.
            waited = first_sent_at - job.line.received_monotonic
            self.metrics.overhead(max(0.0, waited - result.latency_ms / 1000.0))
        self.spam.note_extra_bot_lines(job.line.channel, len(sent) - 1)
        self.validator.remember(job.line.channel, reply_text)
        if self.dry_run:  # live lines come back from the bridge as chatMsg
            self.context.add_bot_line(job.line.channel, job.channel.username, reply_text)
        self.context.add_exchange(
            job.line.channel, job.line.username, job.trigger.message, reply_text
        )

    # --- the record ------------------------------------------------------------------------

    def _log(
        self,
        job: ReplyJob,
        outcome: str,
        reason: str = "",
        result: LLMResult | None = None,
        *,
        attempts: tuple[Attempt, ...] | None = None,
        parts: tuple[str, ...] = (),
        cost_usd: float | None = None,
    ) -> None:
        if outcome not in ("sent", "dry_run"):
            self.metrics.held_back(outcome)
        line, trigger = job.line, job.trigger
        self.response_log.write(
            ResponseRecord(
                channel=line.channel,
                domain=line.domain,
                username=line.username,
                message=line.text,
                outcome=outcome,
                reason=reason,
                trigger_type=trigger.kind,
                trigger_name=trigger.name,
                rank=job.rank,
                correlation_id=job.correlation_id,
                provider=result.provider if result else None,
                model=result.model if result else None,
                attempts=attempts if attempts is not None else (result.attempts if result else ()),
                latency_ms=round(result.latency_ms, 1) if result else None,
                prompt_tokens=result.prompt_tokens if result else None,
                completion_tokens=result.completion_tokens if result else None,
                cost_usd=cost_usd,
                parts=parts,
                dry_run=self.dry_run,
            )
        )

    def log_dropped(self, job: ReplyJob) -> None:
        """The reply queue was full: the job is dropped, but never unrecorded."""
        self._log(job, "dropped", "reply queue full")
