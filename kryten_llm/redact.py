"""The one redactor: secrets and key-shaped strings never leave the process.

Everything that leaves the process passes through here: chat lines (formatter, guard and
sender), the JSONL response log, log lines (a filter in `logsetup`), bus events and control
answers (`ops/discovery`, `ops/control`, budget events), provider error details and the
configuration report. Each of them used to carry its own scrubber, and each knew a different
subset of the secrets; one module means one list of secrets and one list of shapes.

It removes two things, replacing each with `MARKER`:

1. **The configured secret values** (API keys from env or inline, `extra_headers` values, NATS
   password and token, URL passwords, the control token), registered with `set_secrets` at
   start and on every reload. A value of `SECRET_ANYWHERE_MIN_CHARS` or more is removed
   wherever it appears, even glued inside a longer word; a shorter one only as a whole token
   (so a 5-character token does not eat the middle of ordinary words); one shorter than
   `SECRET_MIN_CHARS` cannot be searched for without mangling ordinary text, and a warning
   says so once at registration.
2. **Well-known credential shapes**, whoever's they are: `sk-...` (OpenAI, `sk-ant-`
   Anthropic, `sk-or-` OpenRouter), `AIza...` (Google), GitHub, Slack, Hugging Face, Groq,
   xAI, AWS access key ids, JWTs, `Bearer`/`Basic` credentials, a URL's `user:password@`,
   and `api_key=...`/`password: ...` assignments (the name is kept, the value goes).

Text that is not pure ASCII is also checked in its NFKC form without invisible characters, so
a full-width `ｓｋ－...` or a key with zero-width spaces in it is found too (a match returns
the folded, redacted text; no match returns the text unchanged).

Cost and safety: patterns are compiled once; a cheap look for the literal every shape contains
skips the full shape scan for most text, and pure-ASCII text (nearly every log line) skips the
Unicode fold. Every pattern runs in linear time on hostile input: each alternative either
fails within a bounded number of characters or succeeds consuming what it scanned, the only
alternative with a required part after an unbounded run (JWT) can start only at the
beginning of a token, and every lookahead is bounded. `tests/test_redact.py` checks 1 MB of
hostile input against a generous time bound.

This module sits at the bottom of the import graph: it imports nothing from the package, so
config, providers, the response log and the log setup can all use it.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MARKER = "***redacted***"
"""What every removed secret becomes, everywhere."""
SECRET_MIN_CHARS = 4
"""Configured secrets shorter than this are not searched for: they would redact word parts."""
SECRET_ANYWHERE_MIN_CHARS = 8
"""Configured secrets at least this long are removed even inside a longer word."""

# Key shapes. Linear time: see the module docstring. Alternatives that keep a prefix name it
# in a group (`name`, `url`), which `_replace_shape` puts back before the marker.
_SHAPES = re.compile(
    r"""
      \bsk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}                  # OpenAI, Anthropic, OpenRouter
    | \bAIza[0-9A-Za-z_\-]{30,}                            # Google / Gemini
    | \b(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{30,}        # GitHub tokens
    | \bxox[abprs]-[A-Za-z0-9\-]{10,}                      # Slack tokens
    | \b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}              # Stripe keys
    | \b(?:hf_|gsk_|xai-|pplx-|r8_)[A-Za-z0-9]{20,}        # HF, Groq, xAI, Perplexity, Replicate
    | \b(?:AKIA|ASIA)[0-9A-Z]{16}\b                        # AWS access key ids
    | (?<![A-Za-z0-9_.\-])eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}  # JWT
    | \b[Bb]earer[ \t]{1,8}(?=[A-Za-z0-9._~+/=\-]{0,80}[0-9])[A-Za-z0-9._~+/=\-]{12,}
    | \bBasic[ \t]{1,8}(?=[A-Za-z0-9+/]{0,80}[0-9+/])[A-Za-z0-9+/]{16,}={0,2}
    | (?P<url>://)[^\s/@:]{0,64}:[^\s/@]{1,128}@          # URL credentials (user:password@)
    | (?P<name>(?i:\b(?:
          api[_-]?key|x-api-key|api[_-]?secret|access[_-]?token|auth[_-]?token
        | refresh[_-]?token|client[_-]?secret|secret[_-]?key|private[_-]?key|password|passwd
      )\b)["']?[ \t]{0,4}[:=][ \t]{0,4}["']?)[^\s"',;]{4,}
    """,
    re.VERBOSE,
)
# Cheap first look, on the lower-cased text: a literal every shape above contains. Most log lines
# have none, and then the costlier shape scan is skipped.
_SHAPE_HINTS = re.compile(
    "sk-|aiza|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|xox|k_live_|k_test_|hf_|gsk_|xai-|pplx-|r8_"
    "|akia|asia|eyj|bearer|basic|://|key|secret|token|passw"
)
# Invisible characters a key may be salted with (removed only when checking the folded form).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U000e0000-\U000e0fff]"
)


def _is_token_char(text: str, index: int) -> bool:
    return 0 <= index < len(text) and text[index].isascii() and text[index].isalnum()


def _replace_whole_token(match: re.Match[str]) -> str:
    """A short secret is removed only when it stands alone, not inside a longer word."""
    glued = _is_token_char(match.string, match.start() - 1) or _is_token_char(
        match.string, match.end()
    )
    return match.group(0) if glued else MARKER


def _replace_shape(match: re.Match[str]) -> str:
    if match.group("url"):
        return f"://{MARKER}@"
    return (match.group("name") or "") + MARKER


def _fold(text: str) -> str:
    """NFKC without invisible characters: the form a reader's eye (or CyTube) sees."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


class Redactor:
    """Immutable: one set of configured secrets, ready to search (see the module docstring).

    `text()` and `value()` are safe to call from any thread.
    """

    __slots__ = ("_anywhere", "_secrets", "_tokens", "unsearchable")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values: set[str] = set()
        self.unsearchable = 0
        """How many non-empty secrets were too short to search for."""
        for secret in secrets:
            if not isinstance(secret, str) or not secret.strip():
                continue
            forms = {secret.strip(), _fold(secret).strip()}
            usable = {f for f in forms if len(f) >= SECRET_MIN_CHARS}
            self.unsearchable += not usable
            values |= usable
        self._secrets = frozenset(values)
        # Longest first, so a secret that contains another is removed whole.
        by_length = sorted(values, key=lambda s: (-len(s), s))
        self._anywhere = [s for s in by_length if len(s) >= SECRET_ANYWHERE_MIN_CHARS]
        short = [s for s in by_length if len(s) < SECRET_ANYWHERE_MIN_CHARS]
        # Plain literals (fast to search); the whole-token check is done per match.
        self._tokens = re.compile("|".join(map(re.escape, short))) if short else None

    def with_secrets(self, more: Iterable[str | None]) -> Redactor:
        """This redactor's secrets plus `more` (e.g. a provider's own key and headers)."""
        return Redactor([*self._secrets, *more])

    def text(self, text: str) -> str:
        """`text` with every secret and key shape replaced by `MARKER`."""
        if not text:
            return text
        cleaned = self._scan(text)
        if cleaned.isascii():
            return cleaned
        folded = _fold(cleaned)
        if folded == cleaned:
            return cleaned
        refolded = self._scan(folded)
        return refolded if refolded != folded else cleaned

    def _scan(self, text: str) -> str:
        for secret in self._anywhere:
            if secret in text:
                text = text.replace(secret, MARKER)
        if self._tokens is not None:
            text = self._tokens.sub(_replace_whole_token, text)
        if _SHAPE_HINTS.search(text.lower()) is None:
            return text
        return _SHAPES.sub(_replace_shape, text)

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string (keys too) redacted, ready for `json.dumps`.

        Tuples and sets become lists, non-finite floats None (not valid JSON), and any other
        object its redacted `str()` (which is what `json.dumps(default=str)` would publish).
        """
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self.text(str(value))


_current = Redactor()


def set_secrets(secrets: Iterable[str | None]) -> None:
    """Make `secrets` the configured secret values (at start and on every reload).

    The previous set is replaced: a key removed from the configuration is no longer sent
    anywhere. Swapping one reference is atomic, so threads (the response log writer) always
    see a whole set.
    """
    global _current
    redactor = Redactor(secrets)
    if redactor.unsearchable:
        log.warning(
            "%d configured secret(s) shorter than %d characters cannot be scrubbed from output; "
            "use longer ones",
            redactor.unsearchable,
            SECRET_MIN_CHARS,
        )
    _current = redactor


def current() -> Redactor:
    """The redactor for the configured secrets in force."""
    return _current


def _with(also: Collection[str | None]) -> Redactor:
    return _current.with_secrets(also) if also else _current


def redact_text(text: str, also: Collection[str | None] = ()) -> str:
    """`text` without configured secrets (plus `also`) or key shapes."""
    return _with(also).text(text)


def redact_value(value: Any, also: Collection[str | None] = ()) -> Any:
    """A JSON-like value without configured secrets (plus `also`) or key shapes."""
    return _with(also).value(value)


def has_secret(text: str) -> bool:
    """True if `text` holds something `redact_text` would remove."""
    return redact_text(text) != text


def url_password(url: str) -> str | None:
    """The password in a URL's `user:password@`, if any (it is a secret to register)."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None
