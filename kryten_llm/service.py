"""Thin wiring: connect to NATS through kryten-py, build the pipeline, run until told to stop.

Start order is chosen so nothing is lost and nothing half-starts: HTTP session and client
first, then the pipeline, then the workers, and only then the subscriptions, so the first
event already has somewhere to go. Stop order is the reverse, with a bounded grace period
for replies already in flight.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import aiohttp
from kryten import KrytenClient

from kryten_llm import __version__
from kryten_llm._bus import raw_nats
from kryten_llm.config import Settings
from kryten_llm.context import load_current_media
from kryten_llm.dispatch import Dispatcher
from kryten_llm.listener import MessageListener
from kryten_llm.llm_manager import LLMManager
from kryten_llm.pipeline import Pipeline
from kryten_llm.ranks import load_ranks_from_kv
from kryten_llm.response_log import ResponseLog
from kryten_llm.sender import ChatSender

log = logging.getLogger(__name__)

SERVICE_NAME = "llm"
SHUTDOWN_GRACE_SECONDS = 5.0
HTTP_CONNECTIONS_MAX = 32
KV_TIMEOUT_SECONDS = 3.0


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret value in play, so the response log can scrub them wherever they appear."""
    secrets = [p.resolve_api_key() for p in settings.llm_providers.values()]
    for secret in (settings.nats.password, settings.nats.token):
        if secret is not None:
            secrets.append(secret.get_secret_value())
    return [s for s in secrets if s]


def kryten_config(settings: Settings, log_level: str) -> dict[str, Any]:
    """kryten-py's config: our channels, no throttle of its own (we pace per channel)."""
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
        "service": {"name": SERVICE_NAME, "version": __version__},
        "log_level": log_level,
        "chat_min_delay": 0.0,
        "chat_jitter": 0.0,
    }


class LLMService:
    """One process serving every configured channel."""

    def __init__(self, settings: Settings, log_level: str = "INFO") -> None:
        self.settings = settings
        self.log_level = log_level
        self.start_ms = int(time.time() * 1000)
        self._stop = asyncio.Event()
        self.client: KrytenClient | None = None
        self.session: aiohttp.ClientSession | None = None
        self.listener: MessageListener | None = None
        self.dispatcher: Dispatcher | None = None
        self.pipeline: Pipeline | None = None
        self.response_log = ResponseLog(
            settings.response_log, secrets=lambda: configured_secrets(self.settings)
        )
        self.pipeline_options: dict[str, Any] = {}
        """Test and replay hooks passed to the Pipeline (clock, rng)."""

    @property
    def dry_run(self) -> bool:
        return self.settings.testing.dry_run

    async def start(self) -> None:
        settings = self.settings
        kryten_logger = logging.getLogger("kryten")
        self.client = KrytenClient(kryten_config(settings, self.log_level), logger=kryten_logger)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS_MAX)
        )
        await self.response_log.start()
        await self.client.connect()
        llm = LLMManager(settings.llm_providers, settings.llm_manager, self.session)
        sender = ChatSender(self._send_chat, settings.message_processing, self.dry_run)
        self.pipeline = Pipeline(
            settings,
            llm=llm,
            sender=sender,
            response_log=self.response_log,
            start_ms=self.start_ms,
            **self.pipeline_options,
        )
        await self._load_bridge_state(self.pipeline)
        processing = settings.message_processing
        self.listener = MessageListener(self.client, settings.channels, processing.queue_size)
        self.dispatcher = Dispatcher(
            self.listener.queue,
            self.pipeline.decide,
            self.pipeline.reply,
            workers=processing.workers,
            reply_queue_size=processing.queue_size,
            on_dropped=self.pipeline.log_dropped,
        )
        self.dispatcher.start()
        await self.listener.start()
        channels = ", ".join(f"{c.domain}/{c.channel}" for c in settings.channels)
        log.info(
            "kryten-llm %s ready on %s%s",
            __version__,
            channels,
            " (dry run: nothing will be posted)" if self.dry_run else "",
        )

    async def _load_bridge_state(self, pipeline: Pipeline) -> None:
        """What the bridge already knows: ranks (chatMsg has none) and the video playing.

        Missing buckets are normal (bridge not up yet, or JetStream off): events fill in.
        """
        connection = raw_nats(self.client)
        if connection is None:
            return
        for channel in self.settings.channels:
            await load_ranks_from_kv(
                connection, channel.channel, pipeline.ranks, KV_TIMEOUT_SECONDS
            )
            media = await load_current_media(connection, channel, KV_TIMEOUT_SECONDS)
            if media is not None:
                pipeline.context.set_video(media)

    async def _send_chat(self, channel: str, domain: str, text: str) -> object:
        assert self.client is not None
        return await self.client.send_chat(channel, text, domain=domain)

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run_until_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop listening, let in-flight replies finish briefly, then close everything once."""
        log.info("shutting down")
        if self.listener is not None:
            await self.listener.stop()
        if self.dispatcher is not None:
            if not await self.dispatcher.drain(SHUTDOWN_GRACE_SECONDS):
                log.warning(
                    "in-flight replies did not finish within %.0fs; cancelling them",
                    SHUTDOWN_GRACE_SECONDS,
                )
            await self.dispatcher.stop()
        if self.client is not None:
            await self.client.disconnect(reason="shutdown")
        if self.session is not None:
            await self.session.close()
        await self.response_log.close()
        log.info("stopped")


async def run_service(settings: Settings, log_level: str) -> int:
    """Run until SIGTERM/SIGINT; the exit status for the CLI."""
    service = LLMService(settings, log_level)
    service.install_signal_handlers()
    try:
        await service.start()
    except Exception as exc:
        log.error("could not start: %s", exc)
        await service.stop()
        return 1
    await service.run_until_stopped()
    await service.stop()
    return 0
