"""Turn an LLM answer, streamed or not, into validated, guarded chat lines as it arrives.

Complete sentences go to chat as soon as they fill a line (or have waited a moment for a slow
model), so the room sees a long answer start long before the model finishes, while a short
answer still arrives as one line.
Every chunk passes the formatter, the validator and the output guard before it is sent. A
refused first chunk gets the configured refusal action (regenerate once, fallback, silent);
a refused later chunk ends the reply there. A stream that breaks mid-way ends with what was
already sent, and the reason is reported for the log.

Reading a stream costs time linear in its length (sentences are found in new text only), and
a stream is stopped, its connection closed, once it holds more than the reply could ever post
(`HELD_TEXT_FACTOR`): a model that writes without end cannot freeze the bot or fill memory.
Whatever ends a stream early, the text that arrived stays the result, so the reply is still
logged with its provider and accounted for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kryten_llm.llm.manager import LLMManager, LLMUnavailable
from kryten_llm.reply.formatter import MAX_INPUT_CHARS, ResponseFormatter, SentenceScanner
from kryten_llm.reply.guard import OutputGuard
from kryten_llm.reply.validator import ReplyValidator
from kryten_llm.types import Attempt, ChannelKey, LLMRequest, LLMResult, Outcome

log = logging.getLogger(__name__)

FLUSH_AFTER_SECONDS = 1.5
"""A complete sentence waits at most this long (while the model writes) for company."""
HELD_TEXT_FACTOR = 2
"""A stream may hold this many times what a reply can still post (`max_parts` lines of the
line limit) before it is stopped. Markup and spacing the formatter removes make raw text
longer than the lines it becomes, but not twice as long in an ordinary answer; a model that
writes far more than that without finishing a sentence is looping or hostile."""

Send = Callable[[list[str]], Awaitable[list[str]]]


class SentenceChunker:
    """Cuts a growing text into chat-line-sized chunks of complete sentences (pure; no I/O).

    Complete sentences are held until the line is full (the next text would not fit), until
    one has waited `FLUSH_AFTER_SECONDS` for a slow model, or until the stream ends: so a
    short answer is one line, and a long one starts reaching chat after its first line.

    It holds at most `max_held_chars` (sentences not yet sent plus the one in progress): text
    beyond that is dropped and `full` is set, telling the caller to stop reading.
    """

    def __init__(
        self,
        line_limit: int,
        clock: Callable[[], float] = time.monotonic,
        max_held_chars: int = MAX_INPUT_CHARS,
    ) -> None:
        self._limit = line_limit
        self._clock = clock
        self.max_held_chars = max_held_chars
        self.full = False
        """More text arrived than `max_held_chars` allows; the rest was dropped."""
        self._scanner = SentenceScanner()
        self._pending: list[str] = []
        self._pending_chars = 0
        self._pending_since = 0.0

    @property
    def held_chars(self) -> int:
        """Text held now: complete sentences not yet released and the sentence in progress."""
        return self._pending_chars + self._scanner.chars

    def feed(self, delta: str) -> list[str]:
        """Add text; return the chunks that are ready to send now."""
        if self.full:
            return []
        # Held text grows by at most the delta, plus one space for a gap before it.
        room = self.max_held_chars - self.held_chars - 1
        if len(delta) > room:
            delta = delta[: max(room, 0)]
            self.full = True
        self._add(self._scanner.feed(delta))
        return self._flush() if self._ready() else []

    def finish(self) -> list[str]:
        """The stream ended: everything left is a chunk."""
        self._add(self._scanner.finish())
        return self._flush()

    def _add(self, complete: list[str]) -> None:
        if complete and not self._pending:
            self._pending_since = self._clock()
        self._pending += complete
        self._pending_chars += sum(len(s) + 1 for s in complete)

    def _ready(self) -> bool:
        if not self._pending:
            return False
        line = self._pending_chars + self._scanner.chars
        waited = self._clock() - self._pending_since
        return line > self._limit or waited >= FLUSH_AFTER_SECONDS

    def _flush(self) -> list[str]:
        if not self._pending:
            return []
        text = " ".join(self._pending)
        self._pending, self._pending_chars = [], 0
        return [text]


@dataclass
class ReplyOutcome:
    """What became of one reply, for the log and the caller's bookkeeping."""

    sent: list[str] = field(default_factory=list)
    outcome: Outcome = "sent"
    reason: str = ""
    result: LLMResult | None = None
    attempts: tuple[Attempt, ...] = ()
    regenerated: bool = False


class _Refused(Exception):
    """A chunk the validator or guard would not let through."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass
class ReplyContext:
    """One reply in progress: what was asked, where it goes, and what became of it."""

    request: LLMRequest
    provider: str | None
    channel: ChannelKey
    user_message: str
    send: Send
    outcome: ReplyOutcome = field(default_factory=ReplyOutcome)


class Responder:
    """Writes one reply into chat from an LLM stream, chunk by chunk."""

    def __init__(
        self,
        llm: LLMManager,
        formatter: ResponseFormatter,
        guard: OutputGuard,
        validator: ReplyValidator,
        line_limit: int,
        max_parts: int,
    ) -> None:
        self.llm = llm
        self.formatter = formatter
        self.guard = guard
        self.validator = validator
        self.line_limit = line_limit
        self.max_parts = max_parts

    async def respond(
        self,
        request: LLMRequest,
        provider: str | None,
        channel: ChannelKey,
        user_message: str,
        send: Send,
    ) -> ReplyOutcome:
        """Stream the answer into chat; on a refused opening, apply the refusal action."""
        reply = ReplyContext(request, provider, channel, user_message, send)
        outcome = reply.outcome
        try:
            await self._stream(reply)
            if not outcome.sent:  # the model spoke, but nothing survived formatting
                raise _Refused("invalid", "empty after formatting")
        except LLMUnavailable as exc:
            outcome.outcome, outcome.reason = "llm_failed", exc.reason
            outcome.attempts = exc.attempts
        except _Refused as refusal:
            if outcome.sent:  # a later chunk: keep what was said, end the reply here
                outcome.reason = f"ended early: {refusal.reason}"
            else:
                await self._on_refused_opening(reply, refusal)
        return outcome

    async def _stream(self, reply: ReplyContext) -> None:
        outcome = reply.outcome
        handle = self.llm.stream(reply.request, preferred=reply.provider)
        chunker = SentenceChunker(self.line_limit, max_held_chars=self.max_held_chars)
        try:
            async for delta in handle:
                for chunk in chunker.feed(delta):
                    await self._emit(chunk, reply)
                why = self._why_stop(outcome, chunker)
                if why:
                    outcome.reason = why
                    await handle.stop()  # release the connection before posting the rest
                    break
            for chunk in chunker.finish():
                await self._emit(chunk, reply)
        finally:
            # However the reply ends early, what the model sent stays the result (for the
            # record and the budget); `stop` does nothing to a stream that has finished.
            await handle.stop()
            if handle.done:
                outcome.result = handle.result
                outcome.attempts = handle.result.attempts
                if handle.interrupted and handle.interrupted != "stopped":
                    outcome.reason = f"stream interrupted ({handle.interrupted})"

    @property
    def max_held_chars(self) -> int:
        """The most stream text worth holding: `HELD_TEXT_FACTOR` times what a reply can post."""
        return min(MAX_INPUT_CHARS, HELD_TEXT_FACTOR * self.max_parts * self.line_limit)

    def _why_stop(self, outcome: ReplyOutcome, chunker: SentenceChunker) -> str:
        """Why to stop reading the stream now ("" to go on)."""
        if len(outcome.sent) >= self.max_parts:
            return f"stopped at max_parts ({self.max_parts})"
        if chunker.full:
            why = (
                f"stream stopped: {chunker.held_chars} chars held unsent, "
                f"more than the reply can post ({self.max_parts} lines of {self.line_limit})"
            )
            log.warning("LLM %s", why)
            return why
        return ""

    async def _emit(self, chunk: str, reply: ReplyContext) -> None:
        """Format, validate and guard one chunk, then send it; raise _Refused if refused."""
        room = self.max_parts - len(reply.outcome.sent)
        if room <= 0:
            return
        parts = self.formatter.format(chunk)
        if not parts:
            return
        verdict = self.validator.validate(reply.channel, " ".join(parts), reply.user_message)
        if not verdict.ok:
            raise _Refused("invalid", verdict.reason)
        guarded = self.guard.check(parts[:room])
        for decision in guarded.decisions:
            log.info("guard %s: %s", decision.action, decision.reason)
        if guarded.blocked or not guarded.parts:
            reasons = "; ".join(d.reason for d in guarded.decisions) or "nothing left"
            raise _Refused("guard_blocked", reasons)
        reply.outcome.sent += await reply.send(guarded.parts[:room])

    async def _on_refused_opening(self, reply: ReplyContext, refusal: _Refused) -> None:
        outcome = reply.outcome
        action = self.validator.refusal_action(regenerated=False)
        if refusal.outcome == "guard_blocked" and action == "regenerate":
            action = "silent"  # the guard's verdict is final; a retry may say the same
        log.info("reply refused (%s: %s), action %s", refusal.outcome, refusal.reason, action)
        outcome.outcome, outcome.reason = refusal.outcome, refusal.reason
        if action == "regenerate":
            outcome.regenerated = True
            try:
                await self._complete_once(reply)
                return
            except LLMUnavailable as exc:
                outcome.outcome, outcome.reason = "llm_failed", f"regenerate: {exc.reason}"
                return
            except _Refused as again:
                outcome.outcome, outcome.reason = again.outcome, f"regenerated: {again.reason}"
                action = self.validator.refusal_action(regenerated=True)
        if action == "fallback":
            await self._send_fallback(reply)

    async def _complete_once(self, reply: ReplyContext) -> None:
        result = await self.llm.complete(reply.request, preferred=reply.provider)
        reply.outcome.result, reply.outcome.attempts = result, result.attempts
        await self._emit(result.text, reply)
        if not reply.outcome.sent:
            raise _Refused("invalid", "empty after formatting")
        reply.outcome.outcome = "sent"
        reply.outcome.reason = "regenerated after refusal"

    async def _send_fallback(self, reply: ReplyContext) -> None:
        sent = await self.say(self.validator.fallback_response, reply.send)
        if not sent:
            return
        outcome = reply.outcome
        outcome.sent += sent
        outcome.outcome = "sent"
        outcome.reason = f"fallback after refusal: {outcome.reason}"

    async def say(self, text: str, send: Send) -> list[str]:
        """Post a fixed line (a configured fallback) the way every reply is posted.

        It is configuration, not model output, and still goes through the formatter and the
        guard (and `send`: the sender's checks and pacing): a fallback line written as
        `/clear` is neutralised like any other. Returns what was sent (nothing if refused).
        """
        parts = self.formatter.format(text)
        guarded = self.guard.check(parts[: self.max_parts])
        for decision in guarded.decisions:
            log.info("guard %s: %s", decision.action, decision.reason)
        if guarded.blocked or not guarded.parts:
            return []
        return await send(guarded.parts)
