"""Operator control over NATS: a `nats.micro` service, so the standard tooling finds it.

`nats micro ls`, `nats micro info kryten-llm`, `nats micro stats kryten-llm` and
`nats micro ping` work out of the box (the `$SRV.PING|INFO|STATS` protocol). Endpoints, each
on subject `kryten.llm.control.<name>` (queue group `q`: with several instances, one answers):

| endpoint | body | answer |
|---|---|---|
| `status` | - | health, channels, paused channels, instance, uptime, headline counters |
| `health` | - | the health report (`kryten_llm.ops.health`) |
| `reload` | - | whatever the service's reload callback returns (`{"ok": true, ...}`) |
| `pause`  | `{"channel": "name"}` or `{}` (all) | `{"ok": true, "paused": [...]}` |
| `resume` | `{"channel": "name"}` or `{}` (all) | `{"ok": true, "paused": [...]}` |

A channel is named `domain/name`, or by its bare name when that name is configured on one
domain only (otherwise the request is a 400 asking for `domain/name`: the same name on two
servers is two rooms). `paused` lists rooms as `domain/name`.

`reload`, `pause` and `resume` change behaviour and need the configured `control.token`, sent
as the header `Authorization: Bearer <token>` (`nats req -H 'Authorization:Bearer …'`) or as a
`"token"` field in the JSON body. With no token configured they are always refused. Errors use
the micro error headers (`Nats-Service-Error-Code`: 400 bad request, 401 unauthorised,
403 disabled, 404 unknown channel, 500 failed) with a short description, never a secret or a
traceback.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from kryten_llm._bus import flush_subscriptions, raw_nats, stop_micro_service
from kryten_llm._throttle import ThrottledCount
from kryten_llm.config import ConfigError
from kryten_llm.ops.health import HealthMonitor, StatusSource
from kryten_llm.redact import redact_text, redact_value

log = logging.getLogger(__name__)

MICRO_SERVICE_NAME = "kryten-llm"
CONTROL_SUBJECT_PREFIX = "kryten.llm.control"
REQUEST_BYTES_MAX = 4096
FLUSH_TIMEOUT_SECONDS = 5  # nats-py takes whole seconds
CHANNEL_CHARS_MAX = 200
REFUSAL_LOG_INTERVAL_SECONDS = 10.0
"""At most one warning per error code per this interval: anyone on the bus can be refused."""
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$")

Reload = Callable[[], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]
PauseResume = Callable[[str | None], Awaitable[Collection[str]] | Collection[str]]
StatusExtra = Callable[[], Mapping[str, Any]]


class ControlError(Exception):
    """Refuse a request with a micro error code and a description safe to show anyone."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class UnknownChannel(LookupError):
    """Raised by a pause/resume callback for a channel that is not configured."""


class AmbiguousChannel(LookupError):
    """Raised by a pause/resume callback for a bare name configured on several domains."""


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def parse_body(data: bytes) -> dict[str, Any]:
    """The request body as a JSON object; empty means `{}`; anything else is a 400."""
    if len(data) > REQUEST_BYTES_MAX:
        raise ControlError(400, f"request body larger than {REQUEST_BYTES_MAX} bytes")
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ControlError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "request body must be a JSON object")
    return body


def channel_of(body: Mapping[str, Any]) -> str | None:
    """`channel` (`name` or `domain/name`) from a pause/resume body; absent or null: all."""
    channel = body.get("channel")
    if channel is None:
        return None
    if not isinstance(channel, str) or not channel.strip() or len(channel) > CHANNEL_CHARS_MAX:
        raise ControlError(400, "`channel` must be a non-empty string")
    return channel.strip()


def presented_token(headers: Mapping[str, str] | None, body: Mapping[str, Any]) -> str | None:
    """The token from `Authorization: Bearer <token>`, else from the body's `token` field."""
    for name, value in (headers or {}).items():
        if name.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    in_body = body.get("token")
    return in_body if isinstance(in_body, str) and in_body else None


def check_authorised(expected: str | None, presented: str | None) -> None:
    """Raise unless the presented token matches the configured one (constant-time compare)."""
    if not expected:
        raise ControlError(403, "mutating endpoints are disabled: no control token configured")
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8"), expected.encode("utf-8")
    ):
        raise ControlError(401, "unauthorised: missing or wrong token")


def micro_version(version: str) -> str:
    """nats.micro insists on semver; a local build like `0.1.0.dev3` is reported as `0.0.0`."""
    return version if _SEMVER.match(version) else "0.0.0"


class ControlService:
    """Registers the micro service on the client's NATS connection and answers its endpoints."""

    def __init__(
        self,
        client: Any,
        status: StatusSource,
        monitor: HealthMonitor,
        *,
        version: str,
        instance_id: str,
        token: str | None,
        on_reload: Reload,
        on_pause: PauseResume,
        on_resume: PauseResume,
        status_extra: StatusExtra | None = None,
    ) -> None:
        self._client = client
        self._status = status
        self._monitor = monitor
        self._version = version
        self._instance_id = instance_id
        self._token = token
        self._on_reload = on_reload
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._status_extra = status_extra
        self._started_monotonic = time.monotonic()
        self._service: Service | None = None
        self._refusals: dict[int, ThrottledCount] = {}

    @property
    def refused(self) -> dict[int, int]:
        """Requests refused since start, by error code (401 unauthorised, ...)."""
        return {code: count.total for code, count in self._refusals.items()}

    @property
    def micro(self) -> Service | None:
        """The micro service, once started: the API adds its endpoints to it."""
        return self._service

    @property
    def service_id(self) -> str | None:
        """The micro service id (as `nats micro ls` shows it), once started."""
        return self._service.id if self._service is not None else None

    async def start(self) -> None:
        raw = raw_nats(self._client)
        if raw is None:
            raise RuntimeError("control: the Kryten client is not connected")
        service = await add_service(
            raw,
            name=MICRO_SERVICE_NAME,
            version=micro_version(self._version),
            description="kryten-llm: LLM chat bot for CyTube on the Kryten bus",
            metadata={"instance_id": self._instance_id},
        )
        group = service.add_group(name=CONTROL_SUBJECT_PREFIX)
        for name, handler in (
            ("status", self._status_endpoint),
            ("health", self._health_endpoint),
            ("reload", self._reload_endpoint),
            ("pause", self._pause_endpoint),
            ("resume", self._resume_endpoint),
        ):
            await group.add_endpoint(name=name, handler=self._guarded(name, handler))
        # Once start() returns, the endpoints answer: the server has seen the subscriptions.
        await flush_subscriptions(raw, FLUSH_TIMEOUT_SECONDS)
        self._service = service
        log.info("control: micro service %s (id %s) is up", MICRO_SERVICE_NAME, service.id)

    async def stop(self) -> None:
        """Leave `nats micro ls`; call before the client disconnects."""
        if self._service is not None:
            service, self._service = self._service, None
            await stop_micro_service(service, __name__)

    # --- plumbing ---

    def _guarded(
        self, name: str, handler: Callable[[Request], Awaitable[dict[str, Any]]]
    ) -> Callable[[Request], Awaitable[None]]:
        """Answer every request exactly once: JSON on success, a safe micro error otherwise.

        Answers and error descriptions are redacted (a reload error quotes the config file).
        """

        async def run(request: Request) -> None:
            try:
                answer = await handler(request)
            except ControlError as exc:
                self._note_refusal(name, exc)
                await request.respond_error(str(exc.code), redact_text(exc.description))
                return
            except Exception as exc:
                log.error("control %s failed", name, exc_info=exc)
                await request.respond_error("500", f"{name} failed ({exc.__class__.__name__})")
                return
            await request.respond(json.dumps(redact_value(answer)).encode("utf-8"))

        return run

    def _note_refusal(self, endpoint: str, exc: ControlError) -> None:
        """Count every refusal; warn once per code per interval, so a client hammering the
        endpoints with bad tokens cannot turn each attempt into a log line."""
        counter = self._refusals.get(exc.code)
        if counter is None:  # error codes are a fixed handful: this stays small
            counter = self._refusals[exc.code] = ThrottledCount(REFUSAL_LOG_INTERVAL_SECONDS)
        since = counter.note()
        if since is not None:
            log.warning(
                "control %s refused (%d): %s (%d such refusal(s) since the last report, "
                "%d in total)",
                endpoint,
                exc.code,
                exc.description,
                since,
                counter.total,
            )

    def _authorise(self, request: Request) -> dict[str, Any]:
        body = parse_body(request.data)
        check_authorised(self._token, presented_token(request.headers, body))
        return body

    # --- endpoints ---

    async def _health_endpoint(self, request: Request) -> dict[str, Any]:
        return self._monitor.check().to_dict()

    async def _status_endpoint(self, request: Request) -> dict[str, Any]:
        report = self._monitor.check()
        answer: dict[str, Any] = {
            "name": MICRO_SERVICE_NAME,
            "version": self._version,
            "instance_id": self._instance_id,
            "uptime_seconds": round(time.monotonic() - self._started_monotonic, 1),
            "status": report.status,
            "reasons": report.reasons,
            "channels": [
                {"domain": c.domain, "channel": c.channel} for c in self._status.channels()
            ],
            "paused": sorted(self._status.paused_channels()),
            "health": report.to_dict()["components"],
        }
        if self._status_extra is not None:
            answer.update(self._status_extra())
        return answer

    async def _reload_endpoint(self, request: Request) -> dict[str, Any]:
        self._authorise(request)
        log.info("control: reload requested")
        try:
            result = await _maybe_await(self._on_reload())
        except ConfigError as exc:  # its problems are already redacted and meant for operators
            raise ControlError(400, f"reload refused: {'; '.join(exc.problems)}") from None
        return {"ok": True, **dict(result)}

    async def _pause_endpoint(self, request: Request) -> dict[str, Any]:
        return await self._pause_or_resume(request, "pause", self._on_pause)

    async def _resume_endpoint(self, request: Request) -> dict[str, Any]:
        return await self._pause_or_resume(request, "resume", self._on_resume)

    async def _pause_or_resume(
        self, request: Request, verb: str, callback: PauseResume
    ) -> dict[str, Any]:
        channel = channel_of(self._authorise(request))
        try:
            paused = await _maybe_await(callback(channel))
        except UnknownChannel:
            raise ControlError(404, "unknown channel") from None
        except AmbiguousChannel:
            raise ControlError(
                400, "that channel name is configured on several domains: use domain/name"
            ) from None
        log.info("control: %s %s; paused now: %s", verb, channel or "all channels", sorted(paused))
        return {"ok": True, "paused": sorted(paused)}
