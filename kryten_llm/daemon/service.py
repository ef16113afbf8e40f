"""Thin wiring: connect to NATS through kryten-py, build the pipeline, run until told to stop.

Start order is chosen so nothing is lost and nothing half-starts: the response log, HTTP
session and client first, then durable state (the store, and the keeper filling its mirrors
from KV before any event is heard), then the pipeline and its workers, then the subscriptions
(so the first event already has somewhere to go), then the bus presence, and systemd's
READY=1 last. On the way down the keeper writes what changed after the workers stopped, and
the store closes before the connection does.
Each part's stop goes onto one `AsyncExitStack` the moment the part has started, so stopping
is unwinding that stack: always the exact reverse of start, and only of what did start (a
start that fails or is interrupted half-way unwinds just as cleanly). Unwinding gives replies
in flight a bounded grace period, records every reply it then cuts short as `cancelled`
before the response log closes, and publishes exactly one lifecycle shutdown event (kryten-py's
disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from kryten_llm import __version__
from kryten_llm._bus import Client, raw_nats, really_connected
from kryten_llm.api.service import ApiService
from kryten_llm.config import ChannelSettings, ConfigError, Settings
from kryten_llm.context import load_current_media
from kryten_llm.daemon.banner import log_banner
from kryten_llm.daemon.connect import BusAuthError, BusWaiter
from kryten_llm.daemon.dispatch import Dispatcher
from kryten_llm.daemon.listener import MessageListener
from kryten_llm.daemon.reload import load_for_reload
from kryten_llm.daemon.systemd import SystemdNotifier
from kryten_llm.decide.budget import BudgetEvent, UsageTracker
from kryten_llm.decide.quota import UsageEvent, UserQuota
from kryten_llm.decide.ranks import load_ranks_from_kv
from kryten_llm.llm.manager import LLMManager
from kryten_llm.logsetup import KRYTEN_NOISE, apply_level
from kryten_llm.ops.control import AmbiguousChannel, ControlService, UnknownChannel
from kryten_llm.ops.discovery import Announcer, lifecycle_service_config
from kryten_llm.ops.health import HealthMonitor
from kryten_llm.ops.metrics import Metrics, MetricsServer, metrics_summary
from kryten_llm.pipeline import EventClock, Job, Pipeline
from kryten_llm.redact import redact_value, set_secrets, url_password
from kryten_llm.reply.sender import ChatSender
from kryten_llm.response_log import ResponseLog
from kryten_llm.state import StateStore
from kryten_llm.types import ChannelKey, channels_named

log = logging.getLogger(__name__)

SERVICE_NAME = "llm"
FEATURES = ("chat", "mentions", "triggers", "streaming", "fallback", "budgets", "dry-run")
HTTP_CONNECTIONS_MAX = 32
KV_TIMEOUT_SECONDS = 3.0
CONNECT_STATUS_SECONDS = 10.0
BUDGET_SUBJECT = "kryten.service.budget"


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret value in play, registered with the redactor so none leaves the process.

    API keys (env or inline), every `extra_headers` value (headers are where credentials go),
    passwords in provider and NATS URLs, the NATS password and token, the control token.
    """
    secrets: list[str | None] = []
    for provider in settings.llm_providers.values():
        secrets += [provider.resolve_api_key(), url_password(provider.base_url)]
        secrets += provider.extra_headers.values()
    secrets += [url_password(url) for url in settings.nats.server_list()]
    tokens = (
        settings.nats.password,
        settings.nats.token,
        settings.control.token,
        settings.api.token,
    )
    for secret in tokens:
        if secret is not None:
            secrets.append(secret.get_secret_value())
    return [s for s in secrets if s]


def kryten_config(settings: Settings, log_level: str) -> dict[str, Any]:
    """kryten-py's config: our channels and lifecycle, no throttle of its own."""
    nats_cfg: dict[str, Any] = {
        "servers": settings.nats.server_list(),
        "connect_timeout": settings.nats.connect_timeout_seconds,
    }
    if settings.nats.user:
        nats_cfg["user"] = settings.nats.user
    if settings.nats.password:
        nats_cfg["password"] = settings.nats.password.get_secret_value()
    if settings.nats.token:
        nats_cfg["token"] = settings.nats.token.get_secret_value()
    return {
        "nats": nats_cfg,
        "channels": [{"domain": c.domain, "channel": c.channel} for c in settings.channels],
        "service": lifecycle_service_config(
            SERVICE_NAME, __version__, settings.service, settings.metrics
        ),
        "log_level": log_level,
        # We pace per channel (sender.py); kryten-py's process-wide throttle would make one
        # channel's reply wait for another's.
        "chat_min_delay": 0.0,
        "chat_jitter": 0.0,
    }


class LLMService:
    """One process serving every configured channel; also the health `StatusSource`.

    The parts annotated below exist once `start()` has built them; `control` and
    `metrics_server` stay None when configured off.
    """

    client: Client
    session: aiohttp.ClientSession
    llm: LLMManager
    sender: ChatSender
    pipeline: Pipeline
    listener: MessageListener
    dispatcher: Dispatcher
    announcer: Announcer
    store: StateStore

    def __init__(
        self,
        settings: Settings,
        log_level: str = "INFO",
        config_path: Path | None = None,
        force_dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.log_level = log_level
        self.config_path = config_path
        self.force_dry_run = force_dry_run
        self.start_ms = int(time.time() * 1000)
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._stopped = False
        self._cancelled = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.response_log = ResponseLog(settings.response_log)
        self.metrics = Metrics()
        self.monitor = HealthMonitor(self)
        self.notifier = SystemdNotifier()
        self._exit = contextlib.AsyncExitStack()
        """Each started part's stop, in start order; `stop()` unwinds it."""
        self._exit.push_async_callback(self.notifier.close)  # the very last thing to close
        self.control: ControlService | None = None
        self.api: ApiService | None = None
        self.metrics_server: MetricsServer | None = None
        self.pipeline_options: dict[str, Any] = {}
        """Test and replay hooks passed to the Pipeline (clock, rng)."""

    @property
    def dry_run(self) -> bool:
        return self.settings.testing.dry_run

    # --- start ---------------------------------------------------------------------------

    async def start(self) -> bool:
        """Start everything; False if told to stop while still waiting for NATS.

        Whatever has started when this returns or raises is stopped by `stop()`.
        """
        settings = self.settings
        stack = self._exit
        set_secrets(configured_secrets(settings))
        log_banner(settings, self.config_path, self.dry_run)
        await self.response_log.start()
        stack.push_async_callback(self.response_log.close)
        self.client = Client(
            kryten_config(settings, self.log_level), logger=logging.getLogger("kryten")
        )
        apply_level(self.log_level)  # kryten-py just reset its logger's level to its own
        stack.push_async_callback(self._disconnect)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS_MAX)
        )
        stack.push_async_callback(self.session.close)
        stack.push_async_callback(self._cancel_tasks)  # they may use the session and client
        if not await self._connect(self.client):
            return False
        self.store = StateStore(settings.state, self.client)
        self.pipeline = self._build_pipeline(settings, self.session, self.store)
        await self.store.start()  # opens the pipeline's buckets; degrades, never raises
        stack.push_async_callback(self.store.close)
        self.pipeline.on_event = self._publish_event
        await self.pipeline.keeper.start([c.key for c in settings.channels])
        self.pipeline.usage.restore_global(await self.pipeline.ledger.spent_today())
        stack.push_async_callback(self.pipeline.keeper.close)  # after the workers stop
        await self._load_bridge_state(self.pipeline)
        self._start_workers(settings, self.client, self.pipeline)
        stack.push_async_callback(self.listener.stop)
        await self.listener.start()
        await self._start_presence(settings)
        channels = ", ".join(f"{c.domain}/{c.channel}" for c in settings.channels)
        note = " (dry run: nothing will be posted)" if self.dry_run else ""
        log.info("kryten-llm %s ready on %s%s", __version__, channels, note)
        self.notifier.ready(f"serving {channels}")
        self.notifier.start_watchdog()
        self._ready.set()
        self._track(self._check_providers())
        return True

    async def _connect(self, client: Client) -> bool:
        """Connect, waiting out a NATS server that is not up yet (at boot, during its restart).

        First a probe (`daemon/connect.py`) waits, with backoff and a quiet log, until a
        server accepts us, and raises `BusAuthError` if one refuses our credentials. Then
        kryten-py connects. nats-py would retry that first connection forever too (kryten-py
        asks for unlimited attempts, logging each failure): both waits stay interruptible by
        SIGTERM and tell systemd the start is still in progress, so a long NATS outage does
        not get the bot killed by `TimeoutStartSec` or spend its start limit.
        """
        waiter = BusWaiter(self.settings.nats, self._stop, on_wait=self._waiting_for_bus)
        if not await waiter.wait():
            log.info("stopped while waiting for NATS")
            return False
        connecting = asyncio.ensure_future(client.connect())
        stopping = asyncio.ensure_future(self._stop.wait())
        waited = 0.0
        try:
            while True:
                done, _ = await asyncio.wait(
                    {connecting, stopping},
                    timeout=CONNECT_STATUS_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if connecting in done:
                    connecting.result()  # a failure nats-py would not retry is raised here
                    return True
                if stopping in done:
                    connecting.cancel()
                    await asyncio.gather(connecting, return_exceptions=True)
                    log.info("stopped while waiting for NATS")
                    return False
                waited += CONNECT_STATUS_SECONDS
                log.warning("still waiting for NATS at %s (%.0f s)", self.settings.nats.url, waited)
                self.notifier.notify(
                    f"EXTEND_TIMEOUT_USEC={int(CONNECT_STATUS_SECONDS * 2 * 1_000_000)}"
                )
                self.notifier.status(f"waiting for NATS at {self.settings.nats.url}")
        finally:
            stopping.cancel()

    def _waiting_for_bus(self, delay_seconds: float, status: str) -> None:
        """Keep systemd's start timeout ahead of the next probe, and say why we wait."""
        servers = len(self.settings.nats.server_list())
        probe_seconds = servers * (self.settings.nats.connect_timeout_seconds + 1)
        extend_usec = int((delay_seconds + probe_seconds) * 2 * 1_000_000)
        self.notifier.notify(f"EXTEND_TIMEOUT_USEC={extend_usec}")
        self.notifier.status(status)

    def _build_pipeline(
        self, settings: Settings, session: aiohttp.ClientSession, store: StateStore
    ) -> Pipeline:
        self.llm = LLMManager(settings.llm_providers, settings.llm_manager, session)
        usage = UsageTracker(
            settings.usage, settings.llm_providers, on_budget_event=self._on_budget_event
        )
        self.sender = ChatSender(self._send_chat, settings.message_processing, self.dry_run)
        clock = self.pipeline_options.get("clock")  # a test's chat-time clock, if any
        quota = UserQuota(
            settings.user_limits,
            settings.rate_limits,
            on_event=self._on_usage_event,
            clock=clock if isinstance(clock, EventClock) else time.time,
        )
        return Pipeline(
            settings,
            llm=self.llm,
            sender=self.sender,
            response_log=self.response_log,
            usage=usage,
            metrics=self.metrics,
            start_ms=self.start_ms,
            store=store,
            quota=quota,
            **self.pipeline_options,
        )

    def _start_workers(self, settings: Settings, client: Any, pipeline: Pipeline) -> None:
        """The dispatcher and reply workers, ready before any subscription can feed them."""
        processing = settings.message_processing
        self.listener = MessageListener(
            client,
            settings.channels,
            processing.inbound_queue_size,
            max_event_bytes=lambda: self.settings.listener.max_event_bytes,
        )
        self.dispatcher = Dispatcher(
            self.listener.queue,
            pipeline.decide,
            self._reply,
            workers=processing.workers,
            reply_queue_size=processing.queue_size,
            on_dropped=pipeline.log_dropped,
            malformed=pipeline.malformed,
        )
        self.dispatcher.start()
        self._exit.push_async_callback(self._stop_workers)

    async def _reply(self, job: Job) -> list[str]:
        """A worker's reply; one that shutdown cancels still gets its JSONL record."""
        try:
            return await self.pipeline.reply(job)
        except asyncio.CancelledError:
            self._cancelled += 1
            self.pipeline.log_cancelled(job, "cut short by shutdown while the reply was in flight")
            raise

    async def _stop_workers(self) -> None:
        """Let replies in flight finish within the grace period, then cancel them.

        Every job cut short, in flight or still waiting for a worker, is recorded as
        `cancelled`; the response log closes after this, so those records reach the disk.
        """
        grace = self.settings.service.shutdown_grace_seconds
        if not await self.dispatcher.drain(grace):
            log.warning("in-flight replies did not finish within %gs; cancelling them", grace)
        await self.dispatcher.stop()
        while not self.dispatcher.replies.empty():
            job = self.dispatcher.replies.get_nowait()
            self._cancelled += 1
            self.pipeline.log_cancelled(job, "cut short by shutdown before a worker took it")
        if self._cancelled:
            log.warning(
                "shutdown cancelled %d reply job(s); each is in the response log as cancelled",
                self._cancelled,
            )

    async def _start_presence(self, settings: Settings) -> None:
        """Discovery and heartbeats, the control micro service, and /metrics + /health."""
        stack = self._exit
        self.metrics.attach(self, self.monitor)
        self.announcer = Announcer(
            self.client,
            self,
            self.monitor,
            name=SERVICE_NAME,
            version=__version__,
            features=FEATURES,
            heartbeat_interval_seconds=settings.service.heartbeat_interval_seconds,
            instance_id=settings.service.instance_id,
        )
        stack.push_async_callback(self.announcer.stop)
        await self.announcer.start()
        if settings.control.enabled:
            token = settings.control.token
            self.control = ControlService(
                self.client,
                self,
                self.monitor,
                version=__version__,
                instance_id=self.announcer.instance_id,
                token=token.get_secret_value() if token else None,
                on_reload=self.reload,
                on_pause=self.pause,
                on_resume=self.resume,
                status_extra=lambda: metrics_summary(self.metrics),
            )
            stack.push_async_callback(self.control.stop)
            await self.control.start()
        if settings.api.enabled:
            await self._start_api()
        if settings.metrics.enabled:
            self.metrics_server = MetricsServer(
                self.metrics, self.monitor, settings.metrics.host, settings.metrics.port
            )
            stack.push_async_callback(self.metrics_server.stop)
            await self.metrics_server.start()

    async def _start_api(self) -> None:
        """The service API (`api/`), on the control's micro service when there is one."""
        self.api = ApiService(self.client, self.pipeline, lambda: self.settings.api)
        self._exit.push_async_callback(self.api.stop)  # before the control service stops
        micro = self.control.micro if self.control is not None else None
        await self.api.start(micro, __version__, self.announcer.instance_id)

    async def _load_bridge_state(self, pipeline: Pipeline) -> None:
        """What the bridge already knows: ranks (chatMsg has none) and the video playing.

        Missing buckets are normal (bridge not up yet, or JetStream off): events fill in.
        """
        connection = raw_nats(self.client)
        if connection is None:
            return
        for channel in self.settings.channels:
            await load_ranks_from_kv(connection, channel, pipeline.ranks, KV_TIMEOUT_SECONDS)
            media = await load_current_media(connection, channel, KV_TIMEOUT_SECONDS)
            if media is not None:
                pipeline.context.set_video(media)

    async def _check_providers(self) -> None:
        """Log each provider's availability; a provider that is down stops nothing."""
        await self.llm.check_all()

    async def _send_chat(self, channel: str, domain: str, text: str) -> object:
        return await self.client.send_chat(channel, text, domain=domain)

    def _on_budget_event(self, event: BudgetEvent) -> None:
        """Budget thresholds go to the log and the bus (published off the hot path)."""
        log.warning("budget: %s", event)
        payload = redact_value({"service": SERVICE_NAME, **dict(event)})
        self._track(self.client.publish(BUDGET_SUBJECT, payload))

    def _on_usage_event(self, event: UsageEvent) -> None:
        """A user's use crossed 80, 90 or 100 % of a limit: on the bus for other services."""
        log.info(
            "usage: %s at %d%% of %s (%d/%d)",
            event.user,
            event.percent,
            event.limit,
            event.used,
            event.allowed,
        )
        subject = f"{self.settings.api.subject_prefix}.events.usage_threshold"
        payload = redact_value({"service": SERVICE_NAME, **event.to_dict()})
        self._track(self.client.publish(subject, payload))

    def _publish_event(self, kind: str, payload: dict[str, Any]) -> None:
        """`<api.subject_prefix>.events.<kind>` (response, error, memory): off the hot path."""
        subject = f"{self.settings.api.subject_prefix}.events.{kind}"
        self._track(
            self.client.publish(subject, redact_value({"service": SERVICE_NAME, **payload}))
        )

    def _track(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- control: reload, pause, resume --------------------------------------------------

    async def reload(self) -> dict[str, object]:
        """Re-read the config; apply it atomically or keep the old one (raises ConfigError).

        Only once started (a SIGHUP during start-up waits for that, see `reload_from_signal`).
        """
        plan = load_for_reload(self.config_path, self.settings, self.force_dry_run)
        self.pipeline.apply(plan.settings)  # builds everything first; may raise
        self.llm.reconfigure(plan.settings.llm_providers, plan.settings.llm_manager)
        self.sender.reconfigure(plan.settings.message_processing, plan.settings.testing.dry_run)
        self.settings = plan.settings
        set_secrets(configured_secrets(plan.settings))
        log.info("configuration reloaded: applied %s", ", ".join(plan.applied) or "no changes")
        if plan.restart_required:
            log.warning(
                "changes to %s need a restart; still running the old values",
                ", ".join(plan.restart_required),
            )
        return plan.summary()

    async def reload_from_signal(self) -> None:
        await self._ready.wait()  # a SIGHUP during start-up applies once everything is built
        self.notifier.reloading()
        try:
            await self.reload()
        except ConfigError as exc:
            log.error("reload rejected, still running the previous configuration\n%s", exc.report())
        except Exception as exc:
            log.error(
                "reload failed (%s: %s); still running the previous configuration",
                exc.__class__.__name__,
                exc,
            )
        finally:
            self.notifier.ready()

    def _channel_keys(self, name: str | None) -> list[ChannelKey]:
        """The rooms a pause or resume names: all (None), `domain/channel`, or a bare channel.

        A bare name that is configured on two domains is refused: it would be a guess.
        """
        configured = [c.key for c in self.settings.channels]
        if name is None:
            return configured
        keys = channels_named(name, configured)
        if not keys:
            raise UnknownChannel(name)
        if len(keys) > 1:
            raise AmbiguousChannel(name)
        return keys

    def pause(self, channel: str | None) -> Collection[str]:
        """Stop answering in a channel (or all); it is still heard and remembered."""
        self.pipeline.paused.update(self._channel_keys(channel))
        log.warning("paused: %s", ", ".join(self.paused_channels()))
        return self.paused_channels()

    def resume(self, channel: str | None) -> Collection[str]:
        self.pipeline.paused.difference_update(self._channel_keys(channel))
        log.warning("resumed; paused now: %s", ", ".join(self.paused_channels()) or "none")
        return self.paused_channels()

    # --- StatusSource (health, heartbeats, metrics) --------------------------------------

    def nats_connected(self) -> bool:
        return really_connected(self.client)

    def provider_states(self) -> Mapping[str, Mapping[str, Any]]:
        return self.llm.provider_status()

    def provider_chains(self) -> Mapping[str, Sequence[str]]:
        """Every channel walks the same chain today; keyed per channel, so health can say
        which channels are left without a usable provider."""
        chain = self.llm.order()
        return {str(c.key): chain for c in self.settings.channels}

    def limiter_saturation(self) -> float:
        """The hourly reply budget used, worst channel first (a spent minute is routine)."""
        return float(self.pipeline.limiter.stats()["max_hour_saturation"])

    def queue_depth(self) -> int:
        return self.listener.queue.qsize() + self.dispatcher.replies.qsize()

    def queue_capacity(self) -> int:
        processing = self.settings.message_processing
        return processing.inbound_queue_size + processing.queue_size

    def channels(self) -> Sequence[ChannelSettings]:
        return self.settings.channels

    def paused_channels(self) -> list[str]:
        """Paused rooms as `domain/channel`, sorted."""
        return sorted(str(key) for key in self.pipeline.paused)

    def response_log_status(self) -> Mapping[str, Any]:
        return {**self.response_log.stats(), "error": self.response_log.failing}

    def state_status(self) -> Mapping[str, Any]:
        """Whether durable state is on JetStream KV, and the writes waiting or lost."""
        status = self.store.status
        writer = self.pipeline.keeper.writer
        return {
            "enabled": status.enabled,
            "available": status.available,
            "reason": status.reason,
            "pending_writes": writer.pending if writer else 0,
            "dropped_writes": writer.dropped if writer else 0,
            "failed_writes": writer.failed if writer else 0,
        }

    # --- run and stop --------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._track(self.reload_from_signal()))

    async def run_until_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop, once, everything that started, in reverse order (see the module docstring)."""
        if self._stopped:
            return
        self._stopped = True
        log.info("shutting down")
        self.notifier.stopping()
        await self._exit.aclose()
        log.info("stopped")

    async def _disconnect(self) -> None:
        """Close NATS; kryten-py publishes the one lifecycle shutdown event as it does."""
        KRYTEN_NOISE.shutting_down = True  # the disconnect that follows is intended
        try:
            await self.client.disconnect(reason="shutdown")
        finally:
            KRYTEN_NOISE.shutting_down = False


async def run_service(
    settings: Settings,
    log_level: str,
    config_path: Path | None = None,
    force_dry_run: bool = False,
) -> int:
    """Run until SIGTERM/SIGINT; the exit status for the CLI."""
    service = LLMService(settings, log_level, config_path, force_dry_run)
    service.install_signal_handlers()
    try:
        started = await service.start()
    except BusAuthError as exc:
        log.error("%s", exc)  # one line: what was refused, where, and what to check
        service.notifier.status(str(exc))
        await service.stop()
        return 1
    except Exception as exc:
        log.error("could not start: %s: %s", exc.__class__.__name__, exc)
        await service.stop()
        return 1
    if started:
        await service.run_until_stopped()
    await service.stop()
    return 0
