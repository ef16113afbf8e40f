"""The per-message flow, one way: event -> decision -> prompt -> reply -> log.

`decide()` is synchronous and cheap: the dispatcher calls it for every event, in order, so
history, ranks, spam counters and limits see chat exactly as it happened. When a trigger is
allowed to speak, its limits are spent right there (not after the LLM answers), so a burst of
mentions cannot all slip past a limit while their replies are still being written; and dry
run spends them exactly as a live run does, so a dry run predicts a live run.

All per-channel state is keyed by `ChannelKey` (domain and channel): an event names its room
by its envelope's `domain` and `channel`, and only configured rooms are heard at all.

A triggered line becomes a `Turn` and passes the gates (`decide/gates.py`), in this order;
the first that holds gives the record its outcome:

1. spam (`spam`): the sender is flooding, repeating or penalised (judged as the line was heard);
2. paused (`paused`): the operator paused the room;
3. rate limits (`rate_limited`): global, per-user and per-trigger cooldowns and caps, then
   the asker's own usage limits (`decide/quota.py`, shared with the service API);
4. reply loop (`loop_protection`): the bot's reply window, replies in a row, chat share;
5. budget (`budget`): a daily budget is spent. With a cheaper provider configured it does not
   hold but reroutes the reply to that provider.

When none holds, each gate spends the turn in the same order (the limits, then the reply caps)
and the line gets a `ReplyJob`.

Chat commands (`!chat help`, `decide/commands.py`) are decided here too, in the same order
and through the same gates (the budget excepted: no LLM is asked); `!chat <question>` is a
mention. A command is carried out at once on the keeper's mirrors (`memory/`, whose KV
writes follow behind) and its answer goes to the workers as a `CommandJob`; privacy commands
take effect even when a gate holds their answer. A sender who opted out is checked against
the keeper's mirror for every line: their lines are not remembered (so they never reach
another user's prompt) and nothing of theirs is answered but `optin`; a triggered line of
theirs is recorded as `opted_out` without its words.

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

from kryten_llm.commands import Answer, CommandRunner, applies_when_held
from kryten_llm.config import DEFAULT_PERSONA, ChannelSettings, Settings
from kryten_llm.context import ContextManager, ContextSnapshot
from kryten_llm.decide.budget import UsageTracker
from kryten_llm.decide.commands import Command, CommandParser
from kryten_llm.decide.filters import MessageFilter
from kryten_llm.decide.gates import (
    BudgetGate,
    Gate,
    Hold,
    PausedGate,
    RateLimitGate,
    ReplyLoopGate,
    Reroute,
    SpamGate,
    UserQuotaGate,
    consult,
    spend,
)
from kryten_llm.decide.ledger import Ledger
from kryten_llm.decide.limits import OncePerCooldown, RateLimiter
from kryten_llm.decide.quota import UserQuota
from kryten_llm.decide.ranks import RankRegistry
from kryten_llm.decide.spam import SpamGuard
from kryten_llm.decide.triggers import TriggerEngine
from kryten_llm.events import MalformedEvent, MalformedEvents, parse_chat, parse_media
from kryten_llm.llm.manager import LLMManager
from kryten_llm.logsetup import correlation_id
from kryten_llm.memory.keeper import Keeper
from kryten_llm.ops.metrics import Metrics
from kryten_llm.reply.formatter import ResponseFormatter
from kryten_llm.reply.guard import OutputGuard
from kryten_llm.reply.prompts import PromptBuilder
from kryten_llm.reply.responder import ReplyOutcome, Responder, Send
from kryten_llm.reply.sender import Sender
from kryten_llm.reply.validator import ReplyValidator
from kryten_llm.response_log import (
    REPLY_OUTCOMES,
    ResponseLog,
    ResponseRecord,
    utc_iso,
    utc_now_iso,
)
from kryten_llm.state import StateStore
from kryten_llm.types import (
    Attempt,
    ChannelKey,
    ChatLine,
    LLMRequest,
    LLMResult,
    Outcome,
    Remembered,
    Trigger,
    Turn,
)

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


def response_event(
    source: str, room: ChannelKey, user: str, result: LLMResult, cost_usd: float | None
) -> dict[str, Any]:
    """What `<prefix>.events.response` says of one answer: who, which model, what it cost."""
    return {
        "source": source,
        "channel": str(room),
        "user": user,
        "provider": result.provider,
        "model": result.model,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": cost_usd,
        "latency_ms": round(result.latency_ms, 1),
    }


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

    def iso(self) -> str:
        """The chat's time now, as a record's `timestamp` (CyTube times are epoch ms)."""
        return utc_iso(self.now)


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
    persona: str = DEFAULT_PERSONA
    """The room's persona when the line was heard: which system prompt to use."""
    memories: tuple[Remembered, ...] = ()
    """What chat asked the bot to remember that matches the line (quoted in the prompt)."""


@dataclass(frozen=True, slots=True)
class CommandJob:
    """A chat command, already carried out at decision time: only its answer is left to send.

    Sent by a worker like a reply (formatter, guard, pacing), so an answer never waits for,
    or delays, the event loop; the effect is in the keeper's mirrors already.
    """

    line: ChatLine
    command: Command
    answer: Answer
    channel: ChannelSettings
    correlation_id: str
    rank: float = 0.0
    decided_monotonic: float = field(default_factory=time.monotonic)

    @property
    def trigger(self) -> Trigger:
        return Trigger(kind="command", name=self.command.name, message=self.command.arg)


Job = ReplyJob | CommandJob
"""What the dispatcher hands to a worker."""


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
        store: StateStore | None = None,
        quota: UserQuota | None = None,
    ) -> None:
        self.llm = llm
        self.sender = sender
        self.response_log = response_log
        self.usage = usage or UsageTracker(settings.usage, settings.llm_providers)
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.rng = rng or random.Random()
        self.paused: set[ChannelKey] = set()
        """Rooms the operator paused: heard and remembered, not answered."""
        self.ranks = RankRegistry()
        self.malformed = MalformedEvents()
        self.filter = MessageFilter(settings.bot_names(), settings.listener.ignored_users, start_ms)
        self.context = ContextManager(settings.context)
        self.keeper = Keeper(settings, self.context, store)
        """Memories, personas, opt-outs and history (durable when `store` is given)."""
        self.commands = CommandRunner(settings, self.keeper, self.usage)
        self.ledger = Ledger(settings.usage, settings.llm_providers, store)
        """The day's spend, reserved before each call and settled after (durable in KV)."""
        self.limiter = RateLimiter(settings.rate_limits, clock=clock)
        # Wall-clock days; a replay's chat time, so a replay predicts a live run.
        quota_clock = clock if isinstance(clock, EventClock) else time.time
        self.quota = quota or UserQuota(
            settings.user_limits, settings.rate_limits, clock=quota_clock
        )
        """Each user's requests and tokens, whatever path they come by (the API's too)."""
        self.spam = SpamGuard(settings.spam, settings.rate_limits.admin_min_rank, clock=clock)
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None
        """Where `response`, `error` and `memory` events go (the daemon puts them on the bus)."""
        self.fallbacks = OncePerCooldown(settings.validation.fallback_cooldown_seconds, clock)
        """Who got the fallback line for an LLM outage, and when (see `_say_fallback`)."""
        self.gates: tuple[Gate, ...] = (
            SpamGate(),
            PausedGate(self.paused),
            RateLimitGate(self.limiter),
            UserQuotaGate(self.quota),
            ReplyLoopGate(self.spam),
            BudgetGate(self.usage),
        )
        """In the order the module docstring gives; they live as long as the pipeline."""
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """(Re)configure every stage; memory, limit history and penalties carry over.

        Everything that can fail (patterns, prompt file) is built first and only then swapped
        in, so a reload either applies completely or not at all.
        """
        triggers = TriggerEngine(self._bot_names(settings), settings.triggers, self.rng)
        prompts = PromptBuilder(settings.personality, settings.context)
        personas = {
            name: PromptBuilder(persona.apply(settings.personality), settings.context)
            for name, persona in settings.persona_table().items()
        }
        parser = CommandParser(settings.commands)
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
        self.personas, self.parser = personas, parser
        self.formatter, self.guard = formatter, guard
        self.filter.reconfigure(settings.bot_names(), settings.listener.ignored_users, parser)
        self.keeper.reconfigure(settings)
        self.commands.reconfigure(settings)
        self.context.reconfigure(settings.context)
        self.limiter.reconfigure(settings.rate_limits)
        self.quota.reconfigure(settings.user_limits, settings.rate_limits)
        self.spam.reconfigure(settings.spam, settings.rate_limits.admin_min_rank)
        self.usage.reconfigure(settings.usage, settings.llm_providers)
        self.ledger.reconfigure(settings.usage, settings.llm_providers)
        self.fallbacks.cooldown_seconds = settings.validation.fallback_cooldown_seconds
        self._channels = {c.key: c for c in settings.channels}

    @staticmethod
    def _bot_names(settings: Settings) -> list[str]:
        names = [settings.personality.character_name, *settings.personality.name_variations]
        return names + [c.username for c in settings.channels]

    @property
    def dry_run(self) -> bool:
        return self.sender.dry_run

    # --- decision (synchronous, in event order) ----------------------------------------

    def decide(
        self, event_name: str, envelope: dict[str, Any], received_monotonic: float | None = None
    ) -> Job | None:
        """Update memory from one event and return a job if the bot should answer it.

        `received_monotonic` is when NATS delivered the event (the listener's stamp), so the
        overhead metric includes the time it waited in the inbound queue; None means now.
        """
        key = ChannelKey(envelope["domain"], envelope["channel"])
        channel = self._channels.get(key)
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
                line = parse_chat(envelope, received_monotonic, max_text_chars=limit)
                return self._decide_chat(line, channel)
            if event_name == "changemedia":
                self.context.set_video(parse_media(envelope))
            elif event_name in RANK_EVENTS:
                self.ranks.apply_event(key, event_name, envelope.get("payload"))
        except MalformedEvent as exc:
            self.malformed.note(f"{event_name} event on {envelope['channel']}", str(exc))
        return None

    def _decide_chat(self, line: ChatLine, channel: ChannelSettings) -> Job | None:
        if isinstance(self.clock, EventClock):
            self.clock.advance(line)
        self.metrics.message_seen()
        reason = self.filter.reason_to_ignore(line)
        if reason in INVISIBLE:
            return None
        if reason is None and self.spam.is_other_bot(line.username):
            reason = "another bot"
        command = self.parser.parse(line.text) if reason is None else None
        trigger = self._trigger_of(line, command) if reason is None else None
        # The room as it was before this line, copied only for the lines that may be answered.
        snapshot = self.context.snapshot(line.key, line.username) if trigger else None
        opted_out = self.keeper.is_opted_out(line.key, line.username)
        if not opted_out:  # never remembered, so never in another user's prompt
            self.context.add_chat(line)
            self.keeper.heard(line.key)
        self.spam.note_chat_line(line.key, line.username, is_bot=self.filter.is_own(line))
        if reason is not None:
            log.debug("not answering %s in %s: %s", line.username, line.channel, reason)
            return None
        rank = self.ranks.rank_of(line.key, line.username)
        is_mention = trigger is not None and trigger.kind == "mention"
        verdict = self.spam.observe(line.key, line.username, rank, line.text, is_mention)
        spam = verdict.reason if verdict.is_spam else ""
        if opted_out:
            return self._opted_out(line, channel, rank, command, trigger, spam)
        if command is not None and command.name != "ask":
            return self._decide_command(line, channel, rank, command, spam)
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
            persona=self.commands.active_persona(channel),
        )
        turn = self._turn(line, trigger, rank, spam)
        answering = self._through_gates(turn, job)
        if answering is None:
            return None
        # Chosen only for a line that will be answered: choosing counts as a use.
        found = self.keeper.relevant(line.key, trigger.message, line.time_ms / 1000.0)
        memories = tuple(Remembered(n.id, n.user, n.content) for n in found)
        return dataclasses.replace(answering, memories=memories) if memories else answering

    def _trigger_of(self, line: ChatLine, command: Command | None) -> Trigger | None:
        """A mention or trigger word; `!chat <question>` is a mention, other commands none."""
        if command is None:
            return self.triggers.evaluate(line.text)
        if command.name == "ask":
            return Trigger(kind="mention", name=self.settings.commands.prefix, message=command.arg)
        return None

    def _opted_out(
        self,
        line: ChatLine,
        channel: ChannelSettings,
        rank: float,
        command: Command | None,
        trigger: Trigger | None,
        spam: str,
    ) -> Job | None:
        """An opted-out sender: only `optin` is answered; `forget me` is done, silently."""
        if command is not None and command.name == "optin":
            return self._decide_command(line, channel, rank, command, spam)
        if command is None and trigger is None:
            return None
        reason = "the sender opted out"
        if command is not None and command.name == "forget" and command.arg.strip() == "me":
            answer = self.commands.run(command, line, channel, rank)
            done = "done" if answer.outcome == "command" else "refused"
            reason += f"; {answer.reason} {done}, not answered"
        record = CommandJob(
            line,
            command or Command("ask"),
            Answer("", "command", ""),
            channel,
            line.correlation_id or str(uuid.uuid4()),
            rank,
        )
        shown = trigger if command is None or command.name == "ask" else None
        self._log(record, "opted_out", reason, message="", trigger=shown)
        return None

    def _decide_command(
        self, line: ChatLine, channel: ChannelSettings, rank: float, command: Command, spam: str
    ) -> CommandJob | None:
        """Through the same gates as a reply (the budget excepted: no LLM is asked)."""
        self.metrics.triggered("command")
        cid = line.correlation_id or str(uuid.uuid4())
        correlation_id.set(cid)  # for the log lines below; the dispatcher resets it
        turn = Turn(line, Trigger("command", command.name, command.arg), rank, spam=spam)
        said = consult(self.gates, turn)
        if isinstance(said, Hold):
            reason = said.reason
            if applies_when_held(command) and self.commands.refusal(command, rank) is None:
                done = self.commands.run(command, line, channel, rank)
                reason += f"; {done.reason} done anyway, not answered"
            log.info(
                "holding back %s %s from %s in %s: %s (%s)",
                self.settings.commands.prefix,
                command.name,
                line.username,
                line.channel,
                said.outcome,
                reason,
            )
            held = CommandJob(line, command, Answer("", "command", ""), channel, cid, rank)
            self._log(held, said.outcome, reason)
            return None
        spend(self.gates, turn)
        answer = self.commands.run(command, line, channel, rank)
        if command.name in ("remember", "forget") and answer.outcome == "command":
            ident = answer.reason.partition(": ")[2]
            self.emit(
                "memory",
                {
                    "source": "chat",
                    "action": command.name,
                    "channel": str(line.key),
                    "user": line.username,
                    "id": ident,
                },
            )
        log.info(
            "%s %s from %s in %s: %s",
            self.settings.commands.prefix,
            command.name,
            line.username,
            line.channel,
            answer.reason,
        )
        return CommandJob(line, command, answer, channel, cid, rank)

    def _through_gates(self, turn: Turn, job: ReplyJob) -> ReplyJob | None:
        """Consult the gates in order; record a hold, or spend the turn and answer."""
        line, trigger = turn.line, turn.trigger
        said = consult(self.gates, turn)
        if isinstance(said, Hold):
            log.info(
                "holding back %s from %s in %s: %s (%s)",
                trigger.kind,
                line.username,
                line.channel,
                said.outcome,
                said.reason,
            )
            self._log(job, said.outcome, said.reason)
            return None
        if isinstance(said, Reroute):
            log.info("asking %s instead: %s", said.provider, said.reason)
            job = dataclasses.replace(job, provider=said.provider)
        spend(self.gates, turn)
        log.info(
            "%s %r from %s in %s: answering",
            trigger.kind,
            trigger.name,
            line.username,
            line.channel,
        )
        return job

    def _turn(self, line: ChatLine, trigger: Trigger, rank: float, spam: str) -> Turn:
        """What the gates weigh: the line, who sent it, and the trigger with its own limits."""
        settings = self.triggers.settings_for(trigger.name) if trigger.kind != "mention" else None
        if settings is None:
            return Turn(line, trigger, rank, spam=spam)
        return Turn(
            line,
            trigger,
            rank,
            settings.cooldown_seconds,
            settings.max_responses_per_hour,
            spam,
        )

    # --- reply (asynchronous, concurrent) ----------------------------------------------

    async def reply(self, job: Job) -> list[str]:
        """Ask the LLM, stream the answer into chat through the checks; return what was sent.

        A command's answer needs no LLM: it only goes through the formatter and the guard.
        """
        if isinstance(job, CommandJob):
            return await self._answer(job)
        prompts = self.personas.get(job.persona, self.prompts)
        request = prompts.build(job.line.username, job.trigger, job.snapshot, job.memories)
        line = job.line
        first_sent: list[float] = []
        order = self.llm.order(job.provider)
        estimate = self.ledger.estimate_usd(request, order[0] if order else None)
        reservation = await self.ledger.reserve(estimate)
        if reservation is None:  # replies in flight have reserved the rest of the budget
            reason = f"the daily budget cannot hold this reply (about ${estimate:.4f})"
            log.info("holding back the reply to %s: %s", line.username, reason)
            self._log(job, "budget", reason)
            return []

        async def send(parts: list[str]) -> list[str]:
            sent = await self.sender.send(line, parts, job.correlation_id)
            if sent and not first_sent:
                first_sent.append(time.monotonic())
            return sent

        outcome = await self.responder.respond(
            request, job.provider, line.key, job.trigger.message, send
        )
        await self._say_fallback(job, outcome, send)
        outcome.result, cost = self._account(job, outcome.result, request)
        self.metrics.llm_attempts(outcome.attempts)
        if outcome.sent:
            exchange = outcome.outcome != "fallback"
            self._after_send(job, outcome.sent, outcome.result, first_sent[0], exchange)
        else:
            log.warning(
                "no reply to %s in %s: %s: %s",
                line.username,
                line.channel,
                outcome.outcome,
                outcome.reason,
            )
        final: Outcome = outcome.outcome
        if outcome.sent and final != "fallback":
            final = "dry_run" if self.dry_run else "sent"
        self._log(
            job,
            final,
            outcome.reason,
            outcome.result,
            attempts=outcome.attempts,
            parts=tuple(outcome.sent),
            cost_usd=cost,
        )
        if outcome.sent and final != "fallback" and outcome.result is not None:
            self.emit(
                "response", response_event("chat", line.key, line.username, outcome.result, cost)
            )
        elif final == "llm_failed":
            self.emit(
                "error",
                {
                    "source": "chat",
                    "channel": str(line.key),
                    "user": line.username,
                    "code": "llm_unavailable",
                },
            )
        # The real cost replaces the reservation (after the record: settling waits on KV).
        await self.ledger.settle(reservation, cost or 0.0)
        return outcome.sent

    async def _say_fallback(self, job: ReplyJob, outcome: ReplyOutcome, send: Send) -> None:
        """No LLM answered a direct mention: say `validation.fallback_response`, not nothing.

        Only for mentions (someone asked the bot and waits; a trigger word asked nothing),
        only when the line is configured, and at most once per user per
        `validation.fallback_cooldown_seconds`, so an outage is said once, not repeated to
        every question. The line goes through the formatter, the guard and the sender like
        any reply, and the record's outcome is `fallback` with the LLM's failure as reason.
        """
        text = self.settings.validation.fallback_response
        asked = job.trigger.kind == "mention"
        if outcome.outcome != "llm_failed" or outcome.sent or not asked or not text.strip():
            return
        wait = self.fallbacks.take(job.line.key, job.line.username)
        if wait is not None:
            outcome.reason += f" (fallback line already given to this user: again in {wait:.0f} s)"
            return
        sent = await self.responder.say(text, send)
        if sent:
            log.warning("no LLM answered %s: said the fallback line", job.line.username)
            outcome.sent, outcome.outcome = sent, "fallback"

    def _account(
        self, job: ReplyJob, result: LLMResult | None, request: LLMRequest
    ) -> tuple[LLMResult | None, float | None]:
        """Tokens and cost of a reply (budget events fire from here), and the result to log.

        It never raises: its numbers come from the provider, and a failure here must neither
        lose the reply's record nor break the next reply. A failure is logged and added to
        the result's `anomalies`, so the record says so too.
        """
        if result is None:
            return None, None
        if result.anomalies:
            log.warning("LLM provider %s: %s", result.provider, "; ".join(result.anomalies))
        usd: float | None = None
        try:
            cost = self.usage.record(result, job.line.key, job.line.username, request=request)
            usd = cost.usd
            tokens = cost.prompt_tokens + cost.completion_tokens
            self.quota.add_tokens(job.line.username, tokens, job.rank)
            self.metrics.tokens(result.provider, result.prompt_tokens, result.completion_tokens)
            self.metrics.cost(cost.usd)
        except Exception as exc:
            log.exception("accounting for the reply to %s failed", job.line.username)
            note = f"accounting failed: {type(exc).__name__}"
            return dataclasses.replace(result, anomalies=(*result.anomalies, note)), usd
        return result, usd

    def _after_send(
        self,
        job: ReplyJob,
        sent: list[str],
        result: LLMResult | None,
        first_sent_at: float,
        exchange: bool = True,
    ) -> None:
        """Count what was posted; with `exchange`, remember it as the answer (not a fallback
        line, which says nothing about the question and must not count as a recent reply)."""
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
        self.spam.note_extra_bot_lines(job.line.key, len(sent) - 1)
        if self.dry_run:  # live lines come back from the bridge as chatMsg
            self.context.add_bot_line(job.line.key, job.channel.username, reply_text)
            self.keeper.heard(job.line.key)
        if not exchange:
            return
        self.validator.remember(job.line.key, reply_text)
        if not self.keeper.is_opted_out(job.line.key, job.line.username):
            room, user = job.line.key, job.line.username
            self.context.add_exchange(room, user, job.trigger.message, reply_text)
            self.keeper.talked(room, user)

    async def _answer(self, job: CommandJob) -> list[str]:
        """A command's answer into chat: formatted and guarded like a reply, then recorded."""
        line = job.line
        processing = self.settings.message_processing
        parts = self.formatter.format(job.answer.text)
        guarded = self.guard.check(parts[: processing.max_parts])
        for decision in guarded.decisions:
            log.info("guard %s: %s", decision.action, decision.reason)
        sent: list[str] = []
        if not guarded.blocked and guarded.parts:
            sent = await self.sender.send(line, guarded.parts, job.correlation_id)
        if not sent:
            reasons = "; ".join(d.reason for d in guarded.decisions) or "nothing safe to send"
            log.warning("no answer to %s in %s: %s", line.username, line.channel, reasons)
            self._log(job, "guard_blocked", f"{job.answer.reason}: {reasons}")
            return sent
        if not self.dry_run:
            self.metrics.sent(len(sent))
        self.spam.note_extra_bot_lines(line.key, len(sent) - 1)
        if self.dry_run:  # live lines come back from the bridge as chatMsg
            self.context.add_bot_line(line.key, job.channel.username, " ".join(sent))
            self.keeper.heard(line.key)
        self._log(job, job.answer.outcome, job.answer.reason, parts=tuple(sent))
        return sent

    # --- the record ------------------------------------------------------------------------

    def _log(
        self,
        job: Job,
        outcome: Outcome,
        reason: str = "",
        result: LLMResult | None = None,
        *,
        attempts: tuple[Attempt, ...] | None = None,
        parts: tuple[str, ...] = (),
        cost_usd: float | None = None,
        message: str | None = None,
        trigger: Trigger | None = None,
    ) -> None:
        """One JSONL record; `message` replaces the line's text (empty for an opted-out user),
        `trigger` the job's (a mention by an opted-out user is filed as the mention)."""
        if outcome not in REPLY_OUTCOMES:
            self.metrics.held_back(outcome)
        line, trigger = job.line, trigger or job.trigger
        self.response_log.write(
            ResponseRecord(
                channel=line.channel,
                domain=line.domain,
                username=line.username,
                message=line.text if message is None else message,
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
                anomalies=result.anomalies if result else (),
                timestamp=self._record_time(),
            )
        )

    def _record_time(self) -> str:
        """The record's time: the chat's own under an `EventClock` (a replay), so a replayed
        log reads against its transcript; else the wall clock."""
        return self.clock.iso() if isinstance(self.clock, EventClock) else utc_now_iso()

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """An event for other services; a failing sink never breaks a reply."""
        if self.on_event is None:
            return
        try:
            self.on_event(kind, payload)
        except Exception:
            log.exception("publishing a %s event failed", kind)

    def log_dropped(self, job: Job) -> None:
        """The reply queue was full: the job is dropped, but never unrecorded."""
        self._log(job, "dropped", "reply queue full")

    def log_cancelled(self, job: Job, reason: str) -> None:
        """Shutdown cut the job short (in flight or still queued): recorded all the same."""
        self._log(job, "cancelled", reason)
