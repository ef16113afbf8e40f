"""The contract every LLM provider keeps, and the one error type they all raise.

A provider knows one wire format and nothing about fallback, retries or chat: the LLM manager
decides what to do with a `ProviderError`, using `retryable` and `retry_after_seconds`.

Failure kinds (`ProviderError.kind`, also the `Attempt.outcome` the manager records):

- `http_<status>`: the server answered with an error status. Retryable for 408, 409, 429 and
  5xx; 400/401/403/404 and other 4xx are not (a retry would get the same answer).
- `timeout`, `connect`, `network`: no usable answer arrived. Retryable.
- `bad_json`: the body is not the JSON the wire format promises. Not retryable: a server that
  sends garbage usually keeps doing so, and the next provider is a better bet than a retry.
- `empty`: no choices / no text / null content. Not retryable, for the same reason.
- `max_tokens`: the model spent its whole output budget before writing any answer (a thinking
  or reasoning model's hidden tokens count against it): finish reason `MAX_TOKENS` (Gemini) or
  `length` (OpenAI). Not retryable: the same budget fails the same way, so the next provider
  is asked; the fix is a larger `max_tokens` or a smaller `thinking_budget`.
- `api_error`: an error object inside an otherwise successful response (OpenRouter, Ollama,
  Anthropic stream `error` events). Retryable when the embedded code says it is transient.
- `blocked`: the provider refused the prompt (Gemini safety). Not retryable.
- `stream_cut`: a stream ended (or broke) before its end marker. Retryable before the first
  delta; after it, the manager ends the reply with what it has.
- `bad_request`: the request could not even be built (e.g. a header with a line break).
- `redirect`: the endpoint answered 3xx. Provider requests never follow redirects, because
  the key headers (`x-api-key`, `x-goog-api-key`, `extra_headers`) would go with them to
  whatever host the redirect names. It is a configuration error (fix `base_url`): not
  retryable, and reported naming the target host.

Usage: token counts are untrusted numbers (JSON allows an int of 400 digits). `int_or_none`
reads them, and `Completion` / `StreamUsage` settle them on creation: clamped to
`MAX_TOKENS_PER_CALL`, or None when they are no count at all, each noted in `anomalies`.

Secrets: the resolved API key only ever goes into request headers; every error detail passes
the process-wide redactor (`kryten_llm.redact`: every configured secret, plus this provider's
own key and `extra_headers` values, and anything key-shaped) before a `ProviderError` is
built, so a server echoing a credential cannot put it into logs or attempt records.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import aiohttp
from yarl import URL

from kryten_llm.config import ProviderSettings
from kryten_llm.llm.providers._sse import SSEEvent, ndjson_lines, sse_events
from kryten_llm.redact import redact_text
from kryten_llm.types import LLMRequest, LLMResult

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
"""A completion body larger than this is a broken or hostile server, not a chat reply."""
ERROR_EXCERPT_CHARS = 200
EXCERPT_REDACT_SLACK_CHARS = 4096
"""How far past the cut an excerpt is redacted: longer than any realistic credential (a JWT
included), so none straddles the final cut, and still cheap to scan."""
MAX_TOKENS_PER_CALL = 10_000_000
"""No single call uses more tokens than this (prompt or answer, any model today): a larger
reported count is a broken or hostile server, and is clamped to it."""
NOTE_EXCERPT_CHARS = 24
"""How much of an unusable reported value an anomaly note quotes."""
MAX_RETRY_AFTER_CHARS = 64
"""An HTTP date is 29 characters; a longer `Retry-After` is not one we can use."""


def _settle_usage(usage: Completion | StreamUsage) -> None:
    """Clamp a frozen usage holder's counts in place and note what was wrong with them."""
    prompt, completion, notes = settle_counts(usage.prompt_tokens, usage.completion_tokens)
    object.__setattr__(usage, "prompt_tokens", prompt)
    object.__setattr__(usage, "completion_tokens", completion)
    object.__setattr__(usage, "anomalies", usage.anomalies + notes)


@dataclass(frozen=True, slots=True)
class Completion:
    """What a provider's completion response says: the text, the model and the usage.

    Token counts are settled on creation (`settle_counts`): clamped, or None, with a note in
    `anomalies` for each that was not usable as reported.
    """

    text: str
    model: object = None
    """As reported by the provider (any JSON value); the configured model when absent."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    anomalies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _settle_usage(self)


class ProviderError(Exception):
    """A failed call. `kind` is short and log-friendly: `http_500`, `timeout`, `connect`, ..."""

    def __init__(
        self,
        provider: str,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_seconds: float | None = None,
    ) -> None:
        self.provider = provider
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retryable = retryable
        self.retry_after_seconds = retry_after_seconds
        super().__init__(f"{provider}: {kind}: {detail}")


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """Token counts a stream reports at its end (yielded after the last text delta).

    Settled on creation like `Completion`'s: `anomalies` notes each count not usable as sent.
    """

    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None = None
    anomalies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _settle_usage(self)


StreamItem = str | StreamUsage
"""What `Provider.stream` yields: text deltas, then at most one `StreamUsage`."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds (`120`) or an HTTP date
    (`Wed, 21 Oct 2026 07:28:00 GMT`, RFC 9110), measured from `now` (epoch seconds; the wall
    clock by default). A date already past means 0; anything else unreadable, None.

    The header is bounded by the HTTP client, and `parsedate_to_datetime` splits it on
    whitespace and commas: linear in its length.
    """
    if not value or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        return _retry_after_date(text, time.time() if now is None else now)
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def _retry_after_date(text: str, now: float) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def redirect_target(resp: aiohttp.ClientResponse) -> str | None:
    """The host a 3xx answer points at (None if `resp` is no redirect).

    Only the host and port are named: the rest of a `Location` is the other side's to choose
    and may be long or hostile.
    """
    if not 300 <= resp.status < 400:
        return None
    location = resp.headers.get("Location", "")
    try:
        target = resp.url.join(URL(location)) if location else resp.url
    except ValueError:
        return "an unparsable location"
    host = target.host or "an unknown host"
    return f"{host}:{target.port}" if target.port else host


def error_excerpt(body: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
    """A short, single-line excerpt of an error body, safe to log.

    Redacted before it is cut, so a secret straddling the cut cannot leave its first half.
    """
    window = " ".join(body.split())[: limit + EXCERPT_REDACT_SLACK_CHARS]
    return redact_text(window)[:limit]


def error_message(body: str) -> str:
    """The human message of an error body in any of our wire formats, else an excerpt.

    OpenAI, OpenRouter, Anthropic and Gemini all nest `error.message`; Ollama sends
    `{"error": "text"}`.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return error_excerpt(body)
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            kind = err.get("type") or err.get("status")
            prefix = f"{kind}: " if isinstance(kind, str) and kind else ""
            return error_excerpt(prefix + err["message"])
        if isinstance(err, str):
            return error_excerpt(err)
    return error_excerpt(body)


def as_dict(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: untrusted JSON, read defensively."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """`value` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


class SuspectCount(int):
    """A token count a provider reported that cannot be used as it was (see `int_or_none`).

    It is an int, so every wire format passes it on unchanged into `Completion` or
    `StreamUsage`; those settle it (`settle_counts`) into `usable` (the clamped count, or None
    when the value was no count at all) and keep `note` among their `anomalies`.
    """

    usable: int | None
    note: str

    def __new__(cls, usable: int | None, note: str) -> SuspectCount:
        count = super().__new__(cls, usable or 0)
        count.usable = usable
        count.note = note
        return count


def int_or_none(value: object) -> int | None:
    """A token count from untrusted JSON: an int in 0..MAX_TOKENS_PER_CALL, None if absent.

    Anything else is a `SuspectCount`: too large (an int of 400 digits, `1e308`) is clamped
    to `MAX_TOKENS_PER_CALL`; negative, not finite, or not a number (a string, a bool) counts
    as unknown. A float that is a whole number in range is taken as that int.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_TOKENS_PER_CALL:
            return value
        if value > MAX_TOKENS_PER_CALL:
            return SuspectCount(
                MAX_TOKENS_PER_CALL, f"{_describe(value)}, clamped to {MAX_TOKENS_PER_CALL}"
            )
        return SuspectCount(None, f"{_describe(value)}, ignored")
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        if value.is_integer() and value <= MAX_TOKENS_PER_CALL:
            return int(value)
        usable = min(int(value), MAX_TOKENS_PER_CALL)
        return SuspectCount(usable, f"{_describe(value)}, taken as {usable}")
    return SuspectCount(None, f"{_describe(value)}, ignored")


def _describe(value: object) -> str:
    """A short, safe description of an untrusted value, for an anomaly note."""
    if isinstance(value, bool):
        return f"reported as {str(value).lower()}"
    if isinstance(value, int):
        if abs(value) < 10**NOTE_EXCERPT_CHARS:
            return f"reported as {value}"
        return f"reported as an int of {value.bit_length()} bits"
    if isinstance(value, float):
        return f"reported as {value!r}"
    if isinstance(value, str):
        return f"reported as a string {value[:NOTE_EXCERPT_CHARS]!r}"
    return f"reported as a {type(value).__name__}"


def settle_counts(
    prompt_tokens: int | None, completion_tokens: int | None
) -> tuple[int | None, int | None, tuple[str, ...]]:
    """Plain counts for a result, and a note for each count that was out of range or no count.

    Counts that did not come through `int_or_none` are checked here too, so whatever a wire
    format does, a result never carries an unusable count.
    """
    settled: list[int | None] = []
    notes: list[str] = []
    for name, count in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
        checked = count if isinstance(count, SuspectCount) else int_or_none(count)
        if isinstance(checked, SuspectCount):
            settled.append(checked.usable)
            notes.append(f"{name} {checked.note}")
        else:
            settled.append(checked)
    return settled[0], settled[1], tuple(notes)


def merged_turns(request: LLMRequest) -> list[tuple[str, str]]:
    """The conversation as strictly alternating (role, text) turns starting with the user.

    Anthropic and Gemini want alternating turns that open with the user; our context may hold
    several user lines in a row, so consecutive same-role messages are joined.
    """
    turns: list[tuple[str, str]] = []
    for message in request.messages:
        role = "assistant" if message.role == "assistant" else "user"
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + message.content)
        else:
            turns.append((role, message.content))
    if not turns or turns[0][0] != "user":
        turns.insert(0, ("user", "(the conversation so far)"))
    return turns


def strip_suffix(base_url: str, *suffixes: str) -> str:
    """`base_url` without a trailing API-version path the wire format adds itself."""
    for suffix in suffixes:
        if base_url.endswith(suffix):
            return base_url[: -len(suffix)]
    return base_url


async def read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> str:
    """The response body as text, refusing to buffer more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ValueError(f"response body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


class Provider(ABC):
    """One configured endpoint of one wire format."""

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        self.name = name
        self.settings = settings

    @property
    def model(self) -> str:
        return self.settings.model

    # --- what each wire format supplies -------------------------------------------------

    async def complete(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> LLMResult:
        """Return the completion, or raise ProviderError (never anything else).

        The same for every wire format: POST the payload, then let the format read its
        answer; each provider module only says where, what, and how to read it.
        """
        started = time.perf_counter()
        data = await self._post_json(
            session,
            self.completion_url(),
            self.completion_payload(request),
            self.headers(),
            timeout_seconds,
        )
        answer = self.read_completion(data)
        return LLMResult(
            text=answer.text,
            provider=self.name,
            model=str(answer.model or self.model),
            latency_ms=self._elapsed_ms(started),
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            anomalies=answer.anomalies,
        )

    @abstractmethod
    def completion_url(self) -> str:
        """Where a (non-streaming) completion is requested."""

    @abstractmethod
    def completion_payload(self, request: LLMRequest) -> dict[str, Any]:
        """The JSON body of a non-streaming completion request."""

    @abstractmethod
    def read_completion(self, data: dict[str, Any]) -> Completion:
        """The answer in a completion response; ProviderError if it holds none."""

    def stream(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> AsyncIterator[StreamItem]:
        """Yield text deltas then a `StreamUsage`; raise ProviderError (never anything else).

        `timeout_seconds` bounds connecting and every silence between chunks, not the whole
        stream. The default serves formats without streaming: one delta with the whole text.
        """
        return self.stream_via_complete(session, request, timeout_seconds)

    key_header: tuple[str, str] = ("Authorization", "Bearer {key}")
    """Where this wire format carries the API key: header name and value template."""

    def fixed_headers(self) -> dict[str, str]:
        """Headers the wire format always needs (besides content type and key)."""
        return {}

    def headers(self) -> dict[str, str]:
        """Request headers, including the key (headers are the only place a key may go)."""
        headers = {
            "Content-Type": "application/json",
            **self.fixed_headers(),
            **self.settings.extra_headers,
        }
        key = self.settings.resolve_api_key()
        if key:
            name, template = self.key_header
            headers[name] = template.format(key=key)
        return headers

    @abstractmethod
    def models_url(self) -> str:
        """The cheap listing endpoint used to check that the provider is reachable."""

    def model_listed(self, data: Any) -> bool | None:
        """Whether the models listing names our model (None: the listing cannot tell).

        This reads the `{"data": [{"id": ...}]}` listing OpenAI-compatible servers and
        Anthropic share; formats with another listing override it.
        """
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list):
            return None
        return any(isinstance(m, dict) and m.get("id") == self.model for m in models)

    # --- shared machinery ---------------------------------------------------------------

    async def stream_via_complete(
        self, session: aiohttp.ClientSession, request: LLMRequest, timeout_seconds: float
    ) -> AsyncIterator[StreamItem]:
        """The whole completion as one delta: for `stream: false` and non-streaming formats."""
        result = await self.complete(session, request, timeout_seconds)
        yield result.text
        yield StreamUsage(
            result.prompt_tokens, result.completion_tokens, result.model, result.anomalies
        )

    async def check_availability(
        self, session: aiohttp.ClientSession, timeout_seconds: float = 5.0
    ) -> tuple[bool, str]:
        """(reachable and authorised, detail) from the models endpoint; never raises."""
        timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        try:
            async with session.get(
                self.models_url(), headers=self.headers(), timeout=timeout, allow_redirects=False
            ) as resp:
                target = redirect_target(resp)
                if target is not None:
                    return False, self._redirect_error(resp.status, target).detail
                body = await read_bounded(resp)
                if resp.status >= 400:
                    return False, self.redact(f"http_{resp.status}: {error_message(body)}")
        except TimeoutError:
            return False, f"timeout: no answer within {timeout_seconds:g}s"
        except aiohttp.ClientConnectorError as exc:
            return False, self.redact(f"connect: {exc.os_error}")
        except (aiohttp.ClientError, ValueError) as exc:
            return False, f"network: {exc.__class__.__name__}"
        try:
            listed = self.model_listed(json.loads(body))
        except ValueError:
            return False, "bad_json: models listing is not JSON"
        if listed is False:
            return True, f"reachable, but model {self.model!r} is not in its models list"
        return True, "reachable" + (f", model {self.model!r} listed" if listed else "")

    def redact(self, text: str) -> str:
        """`text` fit to log: this provider's own key and header values are always covered,
        even before (or without) the service registering the configured secrets."""
        own = [self.settings.resolve_api_key(), *self.settings.extra_headers.values()]
        return redact_text(text, also=own)

    def _error(self, kind: str, detail: str, **kwargs: Any) -> ProviderError:
        return ProviderError(self.name, kind, self.redact(detail), **kwargs)

    def _http_error(
        self, status: int, reason: str | None, body: str, headers: Any
    ) -> ProviderError:
        return self._error(
            f"http_{status}",
            error_message(body) or reason or "",
            status=status,
            retryable=status in RETRYABLE_STATUSES or status >= 500,
            retry_after_seconds=parse_retry_after(headers.get("Retry-After")),
        )

    def _redirect_error(self, status: int, target: str) -> ProviderError:
        return self._error(
            "redirect",
            f"configuration error: the endpoint answered {status} redirecting to {target}; "
            "provider requests never follow redirects (the API key would go with them), "
            "so set base_url to the final address",
            status=status,
        )

    def _refuse_redirect(self, resp: aiohttp.ClientResponse) -> None:
        target = redirect_target(resp)
        if target is not None:
            raise self._redirect_error(resp.status, target)

    def _embedded_error(self, err: object) -> ProviderError:
        """An error object inside a 200 response or a stream (OpenRouter, Ollama, Anthropic)."""
        message = err if isinstance(err, str) else ""
        retryable = False
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("type") or "error")
            code = err.get("code")
            retryable = (isinstance(code, int) and code in RETRYABLE_STATUSES) or (
                isinstance(code, int) and code >= 500
            )
            retryable = retryable or err.get("type") in ("overloaded_error", "api_error")
        return self._error("api_error", error_excerpt(message) or "error", retryable=retryable)

    def _network_error(self, exc: BaseException, timeout_seconds: float) -> ProviderError:
        if isinstance(exc, TimeoutError):
            return self._error("timeout", f"no answer within {timeout_seconds:g}s", retryable=True)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return self._error("connect", str(exc.os_error), retryable=True)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return self._error("stream_cut", "response ended mid-way", retryable=True)
        if isinstance(exc, ValueError):
            # aiohttp raises ValueError for an unsendable header; the message may hold the key.
            return self._error("bad_request", "request could not be built (check headers/key)")
        return self._error("network", exc.__class__.__name__, retryable=True)

    def _elapsed_ms(self, started: float) -> float:
        return (time.perf_counter() - started) * 1000.0

    async def _post_json(
        self,
        session: aiohttp.ClientSession,
        url: str,
        payload: dict[str, Any],
        headers: dict[str, str],
        timeout_seconds: float,
    ) -> dict[str, Any]:
        """POST JSON and return the decoded object, mapping every failure to ProviderError."""
        timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        try:
            async with session.post(
                url, json=payload, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                self._refuse_redirect(resp)
                try:
                    body = await read_bounded(resp)
                except ValueError as exc:
                    raise self._error("bad_json", str(exc)) from None
                if resp.status >= 400:
                    raise self._http_error(resp.status, resp.reason, body, resp.headers)
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise self._network_error(exc, timeout_seconds) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise self._error(
                "bad_json", f"response is not JSON: {error_excerpt(body, 80)!r}"
            ) from None
        if not isinstance(data, dict):
            raise self._error("bad_json", "response is not a JSON object")
        return data

    @asynccontextmanager
    async def _stream_response(
        self,
        session: aiohttp.ClientSession,
        url: str,
        payload: dict[str, Any],
        headers: dict[str, str],
        timeout_seconds: float,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST and hand over a successful response for incremental reading.

        Only connecting and each read are bounded (`timeout_seconds`), not the whole body:
        a healthy stream may take longer than any single silence is allowed to.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_seconds, sock_read=timeout_seconds
        )
        try:
            resp = await session.post(
                url, json=payload, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise self._network_error(exc, timeout_seconds) from None
        try:
            self._refuse_redirect(resp)
            if resp.status >= 400:
                try:
                    body = await read_bounded(resp, 65536)
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    body = ""
                raise self._http_error(resp.status, resp.reason, body, resp.headers)
            yield resp
        finally:
            resp.close()

    async def _lines(
        self, resp: aiohttp.ClientResponse, timeout_seconds: float
    ) -> AsyncIterator[bytes]:
        """The body line by line, with read failures mapped to ProviderError."""
        try:
            async for line in resp.content:
                yield line
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._network_error(exc, timeout_seconds) from None
        except ValueError:  # aiohttp: "Line is too long"
            raise self._error("bad_json", "stream line too long") from None

    async def _sse(
        self, resp: aiohttp.ClientResponse, timeout_seconds: float
    ) -> AsyncIterator[SSEEvent]:
        """The body as server-sent events (a plain JSON body here is an error or garbage)."""
        if resp.content_type == "application/json":
            raise await self._json_instead_of_stream(resp)
        try:
            async for event in sse_events(self._lines(resp, timeout_seconds)):
                yield event
        except ValueError:
            raise self._error("bad_json", "server-sent event too large") from None

    async def _json_instead_of_stream(self, resp: aiohttp.ClientResponse) -> ProviderError:
        """Why a stream request got one JSON document: an embedded error, or garbage."""
        try:
            body = await read_bounded(resp, 65536)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            body = ""
        try:
            data = json.loads(body)
        except ValueError:
            return self._error("bad_json", f"stream is not JSON: {error_excerpt(body, 80)!r}")
        if isinstance(data, dict) and "error" in data:
            return self._embedded_error(data["error"])
        return self._error(
            "bad_json",
            "expected an event stream, got a JSON document (set `stream: false` for it)",
        )

    async def _ndjson(
        self, resp: aiohttp.ClientResponse, timeout_seconds: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The body as newline-delimited JSON objects."""
        async for line in ndjson_lines(self._lines(resp, timeout_seconds)):
            yield self._json_object(line, "stream line")

    def _json_object(self, text: str, what: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError:
            raise self._error(
                "bad_json", f"{what} is not JSON: {error_excerpt(text, 80)!r}"
            ) from None
        if not isinstance(data, dict):
            raise self._error("bad_json", f"{what} is not a JSON object")
        return data
