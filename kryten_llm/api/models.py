"""The API's wire contract: one pydantic model per request and per answer.

Requests are strict (no coercion, unknown fields refused) and every text field has a bound, so
an oversize or mistyped field is an `invalid_request` before any work starts. Every answer has
`ok`; a failure is `ErrorAnswer` with a stable `error.code` (the `ErrorCode` literal) that
callers may branch on, and a message meant for people.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

ErrorCode = Literal[
    "invalid_request",
    "rate_limited",
    "budget_exhausted",
    "llm_unavailable",
    "timeout",
    "forbidden",
    "internal",
]
"""`internal` is a bug on our side; the others are documented outcomes (docs/API.md)."""

MICRO_CODES: dict[str, str] = {
    "invalid_request": "400",
    "forbidden": "403",
    "budget_exhausted": "402",
    "rate_limited": "429",
    "internal": "500",
    "llm_unavailable": "503",
    "timeout": "504",
}
"""`Nats-Service-Error-Code` for each error code (HTTP-like, as the control endpoints use)."""

CHANNEL_CHARS_MAX = 200
USER_CHARS_MAX = 100
MESSAGE_CHARS_MAX = 4000
PROMPT_CHARS_MAX = 12_000
SUMMARY_TEXT_CHARS_MAX = 12_000
CALLER_CHARS_MAX = 64
QUERY_CHARS_MAX = 500
PERSONA_CHARS_MAX = 64
MEMORY_ID_CHARS_MAX = 64
LAST_N_MAX = 200
RECALL_MAX = 20

Channel = Annotated[StrictStr, Field(min_length=1, max_length=CHANNEL_CHARS_MAX)]
User = Annotated[StrictStr, Field(min_length=1, max_length=USER_CHARS_MAX)]


class Request(BaseModel):
    """What every request may carry besides its own fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    caller: Annotated[StrictStr, Field(min_length=1, max_length=CALLER_CHARS_MAX)] | None = None
    """Who is asking (a service name), for per-caller limits; absent: `anonymous`."""


class ChatRequest(Request):
    channel: Channel
    user: User
    message: Annotated[StrictStr, Field(min_length=1, max_length=MESSAGE_CHARS_MAX)]
    persona: Annotated[StrictStr, Field(min_length=1, max_length=PERSONA_CHARS_MAX)] | None = None
    post: StrictBool = False


class CompleteRequest(Request):
    prompt: Annotated[StrictStr, Field(min_length=1, max_length=PROMPT_CHARS_MAX)]
    system: Annotated[StrictStr, Field(max_length=PROMPT_CHARS_MAX)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0, le=2)] | None = None


class SummarizeRequest(Request):
    channel: Channel | None = None
    last_n: Annotated[StrictInt, Field(ge=1, le=LAST_N_MAX)] | None = None
    text: Annotated[StrictStr, Field(min_length=1, max_length=SUMMARY_TEXT_CHARS_MAX)] | None = None


class MemoryAddRequest(Request):
    channel: Channel
    user: User
    content: Annotated[StrictStr, Field(min_length=1, max_length=MESSAGE_CHARS_MAX)]
    category: Literal["fact", "preference", "topic"] = "fact"
    importance: Annotated[StrictInt, Field(ge=1, le=5)] = 3


class MemoryRecallRequest(Request):
    channel: Channel
    query: Annotated[StrictStr, Field(min_length=1, max_length=QUERY_CHARS_MAX)]
    limit: Annotated[StrictInt, Field(ge=1, le=RECALL_MAX)] | None = None


class MemoryForgetRequest(Request):
    channel: Channel
    user: User
    id: Annotated[StrictStr, Field(min_length=1, max_length=MEMORY_ID_CHARS_MAX)]


class StatusRequest(Request):
    pass


class UsageRequest(Request):
    user: User


# --- answers ---------------------------------------------------------------------------------


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: Literal[True] = True


class Completion(BaseModel):
    """Which model answered and what it cost in tokens and time."""

    provider: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float


class ChatAnswer(Answer):
    reply: str
    persona: str
    posted: list[str] = Field(default_factory=list)
    """The chat lines posted (`post: true`), after the formatter and guard; else empty."""
    completion: Completion


class CompleteAnswer(Answer):
    text: str
    completion: Completion


class SummarizeAnswer(Answer):
    summary: str
    lines: int
    """How many chat lines were summarised (0 for a given text)."""
    completion: Completion


class MemoryItem(BaseModel):
    id: str
    user: str
    content: str
    category: str
    importance: int


class MemoryAddAnswer(Answer):
    memory: MemoryItem


class MemoryRecallAnswer(Answer):
    memories: list[MemoryItem]


class MemoryForgetAnswer(Answer):
    id: str


class StatusAnswer(Answer):
    provider: str | None
    model: str | None
    providers: dict[str, dict[str, Any]]
    """Each provider's breaker state, by name."""
    requests_today: int
    tokens_today: int
    budget: dict[str, Any]


class UsageAnswer(Answer):
    user: str
    limits: dict[str, dict[str, int | None]]
    """Each usage limit (`requests_per_minute`, ...): `used`, `limit`, `remaining` (null: off)."""
    usage: dict[str, Any]
    """Today's spend: `spent_usd`, `daily_budget_usd`, `left_usd`."""


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class ErrorAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: Literal[False] = False
    error: ErrorDetail


ENDPOINTS: dict[str, tuple[type[Request], type[Answer]]] = {
    "chat": (ChatRequest, ChatAnswer),
    "complete": (CompleteRequest, CompleteAnswer),
    "summarize": (SummarizeRequest, SummarizeAnswer),
    "memory.add": (MemoryAddRequest, MemoryAddAnswer),
    "memory.recall": (MemoryRecallRequest, MemoryRecallAnswer),
    "memory.forget": (MemoryForgetRequest, MemoryForgetAnswer),
    "status": (StatusRequest, StatusAnswer),
    "usage": (UsageRequest, UsageAnswer),
}
"""Endpoint (subject after the prefix) -> its request and answer models."""
