"""`kryten-llm replay TRANSCRIPT`: what the bot would have said in a recorded chat, and why not.

The tuning loop without waiting for a live room: take a chat you have (the bridge's events as
JSONL, or plain `user: message` lines), change cooldowns, triggers and probabilities, replay,
read the report, repeat. The chat goes through the *same* `Pipeline.decide()` the service uses
(trigger engine, rate limiter, spam and loop protection, ranks), in order, with:

- an `EventClock`: time is each chat line's own timestamp, so an hour of chat replays in a
  moment and cooldowns behave as they would have in that hour;
- `random.Random(seed)` for the trigger-probability roll, so a replay is reproducible and the
  live service given the same clock and seed decides the same (the e2e tests check this);
- `start_ms = 0`: every transcript line is new, none is "history from before start".

Lines the bot would answer go through `Pipeline.reply()` with a recording sender (nothing is
posted, nothing sleeps; it behaves as dry run) and, by default, the offline Markov stand-in
(`--llm configured` uses the configured providers for real). Each reply is awaited before the
next line is decided, so replies that feed back into decisions (the repetition check, the
bot's share of the chat) are deterministic too. Every triggered line leaves one record in a
real `ResponseLog` (`--jsonl OUT`, so `kryten-llm stats OUT` reads it; else a temporary file),
stamped with the transcript's time, not the wall clock, so the log reads against the chat
(plain lines carry a time of day only, and are dated day 0 of the epoch, 1970-01-01).

Transcripts (JSONL bridge events, or plain `user: message` lines) are read by `transcript.py`,
which also says what makes a line malformed. Of the events read, those the service listens to
(chatMsg, changeMedia, addUser, userlist, setUserRank, userLeave) are applied; others
(usercount, pm, ...) are counted and skipped, as the service never hears them. Plain lines
without a timestamp come `--interval` seconds apart.

Every event is replayed into one configured channel (`--channel`, default the first), so a chat
recorded elsewhere can tune this configuration. Bad input never stops a replay: a malformed
line is counted, the first few are reported with their line numbers, and the rest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import aiohttp

from kryten_llm.config import (
    ChannelSettings,
    ConfigError,
    ProviderSettings,
    Settings,
    load_settings,
)
from kryten_llm.daemon.listener import EVENTS
from kryten_llm.daemon.service import configured_secrets
from kryten_llm.events import subject_token
from kryten_llm.llm.manager import LLMManager
from kryten_llm.logsetup import setup_logging
from kryten_llm.pipeline import EventClock, Job, Pipeline
from kryten_llm.reply.sender import unsafe_part
from kryten_llm.response_log import (
    REPLY_OUTCOMES,
    ResponseLog,
    ResponseLogError,
    ResponseRecord,
    reason_cause,
)
from kryten_llm.tools._tables import percent, safe, table
from kryten_llm.tools.offline import MODEL_NAME, OfflineLLMServer
from kryten_llm.tools.transcript import (
    DAY_SECONDS,
    DEFAULT_INTERVAL_SECONDS,
    MalformedLine,
    TranscriptError,
    TranscriptEvent,
    TranscriptFile,
    TranscriptParser,
)
from kryten_llm.types import ChatLine, channels_named

log = logging.getLogger(__name__)

DEFAULT_SEED = 1
MAX_INTERVAL_SECONDS = 86_400.0
MALFORMED_EXAMPLES_MAX = 10
LOG_QUEUE_HIGH_FRACTION = 0.5
LOG_DRAIN_POLL_SECONDS = 0.005
LOG_DRAIN_MAX_SECONDS = 10.0
HTTP_CONNECTIONS_MAX = 8
DISPLAY_TEXT_CHARS = 400

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

LLMChoice = Literal["offline", "configured"]
LISTENED_EVENTS = frozenset(subject_token(e) for e in EVENTS)


class ReplayError(Exception):
    """A problem the operator has to fix (unreadable transcript, unknown channel, bad option).

    An unreadable transcript arrives as `TranscriptError` and leaves `replay_transcript` as this.
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- the parts the pipeline talks to ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentLine:
    """One chat line the bot would have posted, at simulated time `time_seconds`."""

    time_seconds: float
    channel: str
    text: str
    correlation_id: str


class RecordingSender:
    """A `Sender` that posts nothing and never waits: it records each part with the event time.

    It refuses the same parts `ChatSender` refuses (`unsafe_part`: blank, or command-like), so
    a replay predicts exactly what would reach chat. It reports dry run: nothing is posted and
    the bot's lines will not come back as chat, so the pipeline remembers them itself.
    """

    dry_run = True

    def __init__(self, settings: Settings, clock: EventClock) -> None:
        self.command_prefixes = settings.message_processing.command_prefixes
        self.clock = clock
        self.lines: list[SentLine] = []

    async def send(self, to: ChatLine, parts: Sequence[str], correlation_id: str = "") -> list[str]:
        sent: list[str] = []
        for part in parts:
            if unsafe_part(part, self.command_prefixes):
                log.error("replay: refusing unsafe part in %s [%s]", to.channel, correlation_id)
                continue
            self.lines.append(SentLine(self.clock(), to.channel, part, correlation_id))
            sent.append(part)
        return sent


class TappedResponseLog(ResponseLog):
    """The real JSONL log, which also hands each record to the replay for its report."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tapped: list[ResponseRecord] = []

    def write(self, record: ResponseRecord) -> bool:
        self._tapped.append(record)
        return super().write(record)

    def take(self) -> list[ResponseRecord]:
        """The records written since the last call."""
        taken, self._tapped = self._tapped, []
        return taken


# --- the result ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """One triggered chat line and what became of it (the same as its JSONL record)."""

    line_no: int
    time_ms: int
    username: str
    message: str
    trigger_type: str
    trigger_name: str
    outcome: str
    reason: str
    parts: tuple[str, ...] = ()

    @property
    def replied(self) -> bool:
        return self.outcome in REPLY_OUTCOMES

    @property
    def reason_key(self) -> str:
        """The cause a reason names (`user_cooldown`, not the seconds left): `reason_cause`."""
        return reason_cause(self.outcome, self.reason)


@dataclass
class ReplayResult:
    """Everything the report shows (and what the tests compare)."""

    source: str
    channel: str
    bot: str
    seed: int
    llm: str
    format: str = "empty"
    chat_lines: int = 0
    chat_users: set[str] = field(default_factory=set)
    events: Counter[str] = field(default_factory=Counter)
    skipped_events: Counter[str] = field(default_factory=Counter)
    malformed: int = 0
    malformed_examples: list[MalformedLine] = field(default_factory=list)
    errors: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    decisions: list[Decision] = field(default_factory=list)
    bot_lines: int = 0
    jsonl: Path | None = None

    def note_malformed(self, item: MalformedLine) -> None:
        self.malformed += 1
        if len(self.malformed_examples) < MALFORMED_EXAMPLES_MAX:
            self.malformed_examples.append(item)

    def note_time(self, time_ms: int) -> None:
        self.first_ms = time_ms if self.first_ms is None else min(self.first_ms, time_ms)
        self.last_ms = time_ms if self.last_ms is None else max(self.last_ms, time_ms)

    @property
    def replies(self) -> list[Decision]:
        return [d for d in self.decisions if d.replied]

    @property
    def spoken(self) -> list[Decision]:
        """Every decision that put lines in chat: replies, and fallback lines for an outage."""
        return [d for d in self.decisions if d.parts]

    @property
    def span_seconds(self) -> float:
        if self.first_ms is None or self.last_ms is None:
            return 0.0
        return (self.last_ms - self.first_ms) / 1000.0

    @property
    def replies_per_hour(self) -> float | None:
        """None when the transcript spans no time at all (a rate would be meaningless)."""
        span = self.span_seconds
        return len(self.replies) / (span / 3600.0) if span > 0 else None

    def outcome_table(self) -> Counter[tuple[str, str]]:
        return Counter((d.outcome, d.reason_key) for d in self.decisions if not d.replied)


@dataclass(frozen=True)
class ReplayOptions:
    seed: int = DEFAULT_SEED
    llm: LLMChoice = "offline"
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    channel: str | None = None
    jsonl: Path | None = None

    def check(self) -> None:
        interval = self.interval_seconds
        if not (math.isfinite(interval) and 0 < interval <= MAX_INTERVAL_SECONDS):
            raise ReplayError(
                f"--interval must be more than 0 and at most {MAX_INTERVAL_SECONDS:g} seconds, "
                f"got {interval:g}",
                EXIT_USAGE,
            )


def pick_channel(settings: Settings, name: str | None) -> ChannelSettings:
    """The configured channel to replay into: `name` (or `domain/name`), else the first."""
    channels = settings.channels
    if name is None:
        return channels[0]
    keys = channels_named(name, [c.key for c in channels])
    if len(keys) == 1:
        return next(c for c in channels if c.key == keys[0])
    known = ", ".join(f"{c.domain}/{c.channel}" for c in channels)
    problem = "is on several domains: use domain/channel" if keys else "is not in the configuration"
    raise ReplayError(f"channel {name!r} {problem} (configured: {known})", EXIT_USAGE)


# --- the replay ----------------------------------------------------------------------------------


class _Replayer:
    """One replay run: owns the pipeline, its LLM, the log, and the result being built."""

    def __init__(
        self,
        settings: Settings,
        channel: ChannelSettings,
        llm: LLMManager,
        response_log: TappedResponseLog,
        result: ReplayResult,
        seed: int,
    ) -> None:
        self.channel = channel
        self.clock = EventClock()
        self.sender = RecordingSender(settings, self.clock)
        self.response_log = response_log
        self.result = result
        self.pipeline = Pipeline(
            settings,
            llm=llm,
            sender=self.sender,
            response_log=response_log,
            start_ms=0,
            clock=self.clock,
            rng=random.Random(seed),
        )
        self._log_high_water = max(
            1, int(settings.response_log.queue_size * LOG_QUEUE_HIGH_FRACTION)
        )

    async def run(self, transcript: TranscriptFile, parser: TranscriptParser) -> None:
        async for item in transcript.items(parser):
            if isinstance(item, MalformedLine):
                self.result.note_malformed(item)
            else:
                await self.event(item)
        self.result.format = parser.format or "empty"
        self.result.bot_lines = len(self.sender.lines)

    async def event(self, event: TranscriptEvent) -> None:
        """Decide on one event exactly as the service would, and reply if it says so."""
        if event.token not in LISTENED_EVENTS:
            self.result.skipped_events[event.event_name] += 1
            return
        malformed_before = self.pipeline.ranks.malformed
        job = self._decide(event)
        if self.pipeline.ranks.malformed > malformed_before:
            self.result.note_malformed(
                MalformedLine(event.line_no, f"malformed {event.event_name}")
            )
            return
        if event.token == "chatmsg":
            self._note_chat(event)
        else:
            self.result.events[event.event_name] += 1
        if job is not None:
            await self._reply(job)
        self._collect(event)
        await self._let_log_catch_up()

    def _decide(self, event: TranscriptEvent) -> Job | None:
        try:
            return self.pipeline.decide(event.token, event.envelope(self.channel))
        except Exception:  # the service survives a bug in one decision; so does a replay
            self.result.errors += 1
            log.exception("replay: error deciding on line %d", event.line_no)
            return None

    async def _reply(self, job: Job) -> None:
        try:
            await self.pipeline.reply(job)
        except Exception:
            self.result.errors += 1
            log.exception("replay: error replying to line of %s", job.line.username)

    def _note_chat(self, event: TranscriptEvent) -> None:
        payload = event.payload
        self.result.chat_lines += 1
        self.result.chat_users.add(str(payload["username"]).lower())
        self.result.note_time(int(payload["time"]))

    def _collect(self, event: TranscriptEvent) -> None:
        """The JSONL records this event produced, as decisions for the report."""
        records = self.response_log.take()
        if not records:
            return
        time_ms = int(event.payload["time"]) if event.token == "chatmsg" else 0
        for record in records:
            self.result.decisions.append(
                Decision(
                    line_no=event.line_no,
                    time_ms=time_ms,
                    username=record.username,
                    message=record.message,
                    trigger_type=record.trigger_type,
                    trigger_name=record.trigger_name,
                    outcome=record.outcome,
                    reason=record.reason,
                    parts=record.parts,
                )
            )

    async def _let_log_catch_up(self) -> None:
        """Keep the log's queue from filling: a replay decides faster than a disk writes."""
        if self.response_log.stats()["queued"] < self._log_high_water:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOG_DRAIN_MAX_SECONDS
        while self.response_log.stats()["queued"] >= self._log_high_water // 2:
            if loop.time() > deadline:
                log.warning("replay: the response log is not keeping up; records may be dropped")
                return
            await asyncio.sleep(LOG_DRAIN_POLL_SECONDS)


def offline_providers(settings: Settings, base_url: str) -> dict[str, ProviderSettings]:
    """Every configured provider name, served by the offline stand-in.

    Keeping the names means triggers that prefer a provider, and a budget's cheaper provider,
    still resolve; non-streaming because the stand-in answers with one JSON document.
    """
    return {
        name: ProviderSettings(
            type="openai_compatible",
            base_url=base_url,
            model=MODEL_NAME,
            enabled=provider.enabled,
            priority=provider.priority,
            stream=False,
        )
        for name, provider in settings.llm_providers.items()
    }


def describe_llm(settings: Settings, choice: LLMChoice, seed: int) -> str:
    if choice == "offline":
        return f"offline Markov stand-in (seed {seed})"
    enabled = [f"{n} ({p.type}, {p.model})" for n, p in settings.llm_providers.items() if p.enabled]
    return "configured providers: " + ", ".join(enabled)


async def _prepare_jsonl(
    target: Path | None, settings: Settings, transcript: Path
) -> tuple[Path, Path | None]:
    """The JSONL path to write (emptied first) and a temporary directory to remove, if any."""
    if target is None:
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="kryten-llm-replay-"))
        return tmp / "replay.jsonl", tmp
    await asyncio.to_thread(_empty_output, target, settings.response_log.path, transcript)
    return target, None


def _empty_output(target: Path, service_log: Path, transcript: Path) -> None:
    """Start `target` empty, refusing to clobber the service's own log or the transcript."""
    resolved = target.resolve()
    for precious, what in (
        (service_log, "the service's own response log"),
        (transcript, "the transcript"),
    ):
        if resolved == precious.resolve():
            raise ReplayError(f"--jsonl {target} is {what}; choose another file", EXIT_USAGE)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ReplayError(f"cannot write {target}: {exc.strerror or type(exc).__name__}") from None


async def replay_transcript(
    path: Path, settings: Settings, options: ReplayOptions = ReplayOptions()
) -> ReplayResult:
    """Replay `path` through the pipeline; raise ReplayError for problems the operator fixes."""
    try:
        return await _replay(path, settings, options)
    except TranscriptError as exc:
        raise ReplayError(str(exc)) from None


async def _replay(path: Path, settings: Settings, options: ReplayOptions) -> ReplayResult:
    options.check()
    channel = pick_channel(settings, options.channel)
    transcript = TranscriptFile(path)
    await transcript.open()
    result = ReplayResult(
        source=str(path),
        channel=f"{channel.domain}/{channel.channel}",
        bot=channel.username,
        seed=options.seed,
        llm=describe_llm(settings, options.llm, options.seed),
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(transcript.close)
        jsonl, tmp_dir = await _prepare_jsonl(options.jsonl, settings, path)
        if tmp_dir is not None:
            stack.push_async_callback(asyncio.to_thread, shutil.rmtree, tmp_dir, True)
        result.jsonl = options.jsonl
        log_settings = settings.response_log.model_copy(
            update={"path": jsonl, "enabled": True, "max_bytes": 0}
        )
        response_log = TappedResponseLog(log_settings, secrets=lambda: configured_secrets(settings))
        await response_log.start()
        stack.push_async_callback(response_log.close)
        providers = settings.llm_providers
        if options.llm == "offline":
            offline = await OfflineLLMServer(seed=options.seed).start()
            stack.push_async_callback(offline.stop)
            providers = offline_providers(settings, offline.base_url)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS_MAX))
        stack.push_async_callback(session.close)
        llm = LLMManager(providers, settings.llm_manager, session)
        replayer = _Replayer(settings, channel, llm, response_log, result, options.seed)
        await replayer.run(transcript, TranscriptParser(options.interval_seconds))
    return result


# --- the report ----------------------------------------------------------------------------------


def clock_time(time_ms: int) -> str:
    """`hh:mm:ss` of a transcript time (UTC time of day for bridge timestamps)."""
    seconds = (time_ms // 1000) % DAY_SECONDS
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _trigger_label(decision: Decision) -> str:
    if decision.trigger_type == "mention":
        return "mention"
    return f"trigger {safe(decision.trigger_name)!r}"


def _said_lines(result: ReplayResult) -> list[str]:
    bot = safe(result.bot)
    lines: list[str] = []
    for reply in result.spoken:
        stamp = f"[{clock_time(reply.time_ms)}]"
        kind = _trigger_label(reply) + (", fallback line" if not reply.replied else "")
        note = f"  (to {safe(reply.username)}, {kind})"
        for index, part in enumerate(reply.parts):
            prefix = stamp if index == 0 else " " * len(stamp)
            suffix = note if index == 0 else ""
            lines.append(f"  {prefix} <{bot}> {safe(part, DISPLAY_TEXT_CHARS)}{suffix}")
    return lines or ["  (nothing)"]


def _header(result: ReplayResult) -> list[str]:
    other = sum(result.events.values())
    lines = [
        f"Replay of {result.source} into {result.channel} as {safe(result.bot)}",
        f"  {result.chat_lines} chat line(s) from {len(result.chat_users)} user(s)"
        + (f", {other} other event(s) applied" if other else "")
        + (
            f", {clock_time(result.first_ms)} to {clock_time(result.last_ms)} "
            f"({duration(result.span_seconds)})"
            if result.first_ms is not None and result.last_ms is not None
            else ""
        ),
        f"  LLM: {result.llm}; trigger rolls seeded with {result.seed}",
    ]
    if result.skipped_events:
        names = ", ".join(f"{safe(n)} {c}" for n, c in result.skipped_events.most_common())
        lines.append(f"  skipped events the service does not listen to: {names}")
    if result.malformed:
        lines.append(f"  skipped {result.malformed} malformed line(s):")
        lines += [f"    line {m.line_no}: {safe(m.reason, 120)}" for m in result.malformed_examples]
        if result.malformed > len(result.malformed_examples):
            lines.append(f"    ... and {result.malformed - len(result.malformed_examples)} more")
    if result.errors:
        lines.append(f"  {result.errors} event(s) failed unexpectedly (see the log)")
    return lines


def _rate_rows(result: ReplayResult) -> list[list[str]]:
    triggered, replies = len(result.decisions), len(result.replies)
    all_lines = result.chat_lines + result.bot_lines
    per_hour = result.replies_per_hour
    return [
        ["chat lines replayed", str(result.chat_lines), ""],
        ["triggered", str(triggered), percent(triggered, result.chat_lines) + " of chat lines"],
        ["replies", str(replies), percent(replies, triggered) + " of triggered"],
        ["bot chat lines", str(result.bot_lines), percent(result.bot_lines, all_lines) + " of all"],
        [
            "replies per hour",
            f"{per_hour:.1f}" if per_hour is not None else "-",
            f"over {duration(result.span_seconds)}",
        ],
    ]


def format_report(result: ReplayResult) -> str:
    """The replay as text: what the bot said and when, how often, and why it held back."""
    lines = [*_header(result), "", "What the bot would have said", *_said_lines(result)]
    lines += ["", "How often it would speak"]
    lines += table(["", "count", "share"], _rate_rows(result))
    triggered = len(result.decisions)
    held = triggered - len(result.replies)
    lines += ["", f"Why it held back: {held} of {triggered} triggered line(s)"]
    lines += table(
        ["outcome", "reason", "count", "share"],
        [
            [safe(outcome), safe(reason, 48), str(n), percent(n, triggered)]
            for (outcome, reason), n in result.outcome_table().most_common()
        ],
        text_columns=2,
    )
    fired: Counter[tuple[str, str]] = Counter()
    answered: Counter[tuple[str, str]] = Counter()
    for decision in result.decisions:
        key = (decision.trigger_type, decision.trigger_name)
        fired[key] += 1
        answered[key] += decision.replied
    lines += ["", "Triggers"]
    lines += table(
        ["type", "name", "fired", "answered"],
        [[safe(k), safe(n), str(c), str(answered[(k, n)])] for (k, n), c in fired.most_common()],
        text_columns=2,
    )
    if result.jsonl is not None:
        lines += ["", f"Records written to {result.jsonl} (read them with: kryten-llm stats FILE)"]
    return "\n".join(lines) + "\n"


# --- the CLI entry -------------------------------------------------------------------------------


def run_replay(
    transcript: Path,
    config: Path | None,
    options: ReplayOptions,
    log_level: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`kryten-llm replay`: print the report; 0 on success, 1 unreadable input, 2 bad options.

    `out`/`err` default to the streams current at call time (not import time).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    setup_logging(log_level or "WARNING")
    try:
        options.check()
        settings = load_settings(config)
        result = asyncio.run(replay_transcript(transcript, settings, options))
    except ConfigError as exc:
        print(exc.report(), file=err)
        return EXIT_USAGE
    except ReplayError as exc:
        print(f"kryten-llm replay: {exc}", file=err)
        return exc.exit_code
    except ResponseLogError as exc:
        print(f"kryten-llm replay: {exc}", file=err)
        return EXIT_FAILURE
    out.write(format_report(result))
    if result.malformed and not result.chat_lines and not sum(result.events.values()):
        print(f"kryten-llm replay: nothing in {transcript} could be replayed", file=err)
        return EXIT_FAILURE
    return EXIT_OK


__all__ = [
    "DEFAULT_SEED",
    "Decision",
    "RecordingSender",
    "ReplayError",
    "ReplayOptions",
    "ReplayResult",
    "format_report",
    "replay_transcript",
    "run_replay",
]
