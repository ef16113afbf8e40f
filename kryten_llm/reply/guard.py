"""The output guard: the last check between untrusted model text and a CyTube chat line.

CyTube runs any chat line whose first character is `/` as a command with the bot's rank, after
turning control characters into spaces and trimming; other bots in a channel react to `!` or
`.` commands. The guard therefore, for every part that will be published:

1. normalises it (NFKC, control characters to spaces, invisible characters removed, whitespace
   collapsed), and publishes the *normalised* text, so what was checked is what is sent;
   then replaces configured secrets and key-shaped strings (`kryten_llm.redact`), before any
   re-split could cut one in two;
2. applies the blocklist (block the reply, or redact the match) and the link policy; a blocked
   link domain is also found written to slip past a plain match (`evil[.]com`,
   `evil (dot) com`, `hxxps://evil[.]com`, look-alike letters such as a Cyrillic `е` or a
   Greek `ο`, look-alike dots), on a letter-for-letter "skeleton" of the text, and the words
   that carry it are cut;
3. re-splits any part over the length limit (so unformatted text is safe too);
4. neutralises command-like parts by **dropping** the leading command characters (and any
   blanks before them), repeatedly, so "/me /clear" becomes "me /clear" and "//kick" becomes
   "kick": the words stay readable and nothing executes;
5. drops parts left empty, keeps at most `max_parts`, and re-checks every invariant; a part
   that still failed one would be dropped, never published.

Every decision is returned with a reason, and logged here too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from kryten_llm.config import MessageProcessingSettings, SafetySettings
from kryten_llm.redact import has_secret, redact_text
from kryten_llm.reply._text import (
    collapse_whitespace,
    controls_to_spaces,
    is_control,
    is_invisible,
    remove_invisible,
    utf16_len,
)
from kryten_llm.reply.formatter import MAX_INPUT_CHARS, split_text

log = logging.getLogger(__name__)

# Characters that look like a command character but that NFKC leaves alone. The fullwidth and
# small forms (U+FF0F, U+FF01, U+FE57, U+FF0E, U+2024 ...) are already folded by NFKC.
LOOKALIKES: dict[str, str] = {
    "\u2215": "/",  # DIVISION SLASH
    "\u2044": "/",  # FRACTION SLASH
    "\u29f8": "/",  # BIG SOLIDUS
    "\u1735": "/",  # PHILIPPINE SINGLE PUNCTUATION
    "\u2571": "/",  # BOX DRAWINGS LIGHT DIAGONAL UPPER RIGHT TO LOWER LEFT
    "\u27cb": "/",  # MATHEMATICAL RISING DIAGONAL
    "\u29f6": "/",  # SOLIDUS WITH OVERBAR
    "\u2afb": "/",  # TRIPLE SOLIDUS BINARY RELATION
    "\u2afd": "/",  # DOUBLE SOLIDUS OPERATOR
    "\u0337": "/",  # COMBINING SHORT SOLIDUS OVERLAY
    "\u0338": "/",  # COMBINING LONG SOLIDUS OVERLAY
    "\u4e3f": "/",  # CJK radical "slash" (NFKC of U+2F03 KANGXI RADICAL SLASH)
    "\u01c3": "!",  # LATIN LETTER RETROFLEX CLICK
    "\ua4f8": ".",  # LISU LETTER TONE MYA TI
    "\u3002": ".",  # IDEOGRAPHIC FULL STOP
}

# A link: any `scheme://` or a bare `www.` host.
# Every repetition is bounded, so scanning stays linear on hostile text such as "a.a.a.a...".
_URL = re.compile(r"(?i)(?:\b[a-z][\w+.-]{0,30}://|\bwww\.)[^\s<>\"'`]+")
_DOMAIN = re.compile(
    r"(?i)(?<![\w.-])((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_][\w-]{1,62})(?![\w-])"
)
# Letters that read as a Latin letter in a host name, and dots that read as a dot: mapped
# one character to one, so a match on the skeleton is a span of the text. NFKC has already
# folded fullwidth, mathematical and other compatibility forms before this is used.
_SKELETON_PAIRS = (
    # Cyrillic
    ("аaвbеeёeіiїiјjкkмmоoрpсcѕsуyхxԁdԛqԝwһhӏl", "lower"),
    ("АaВbЕeЁeІiЇiЈjКkМmНhОoРpСcЅsТtУyХxԚqԜwҺhӀl", "upper"),
    # Greek
    ("αaοoνvρpιiκkτtυuχxεe", "lower"),
    ("ΑaΒbΕeΖzΗhΙiΚkΜmΝnΟoΡpΤtΥyΧx", "upper"),
    # Armenian and Latin extensions
    ("օoսuհhոnզqցgıiȷjɑaɡgɩiɪi", "other"),
    # dots: ideographic, Arabic, Syriac, middle dots
    ("\u3002.\u06d4.\u0701.\u0702.\u00b7.\u2e31.\ua4f8.", "dots"),
)
SKELETON: dict[int, str] = {
    ord(pairs[i]): pairs[i + 1] for pairs, _ in _SKELETON_PAIRS for i in range(0, len(pairs), 2)
}
_DISGUISED_DOT = re.compile(
    r"\s{0,3}[\[({<]\s{0,3}(?:\.|dot)\s{0,3}[\])}>]\s{0,3}"
    r"|(?<=[^\W_])\s{1,3}(?:dot|\.)\s{1,3}(?=[^\W_])"
)
"""`[.]`, `(.)`, `{dot}`, ` (dot) `, and ` dot ` or ` . ` between two words: a dot, written
to slip past (matched on the lower-cased skeleton). Every repetition is bounded: linear."""
# CyTube's own command character is neutralised whatever `command_prefixes` says.
ALWAYS_NEUTRALISED = ("/",)
_TRAILING_PUNCTUATION = ".,;:!?)]}'\"”’»"


@dataclass(frozen=True)
class GuardDecision:
    """One thing the guard did, and why (for the caller's log and the response log)."""

    action: str
    """`neutralised`, `stripped`, `redacted`, `resplit`, `dropped`, `truncated`, `blocked`."""
    reason: str


@dataclass(frozen=True)
class GuardResult:
    """What may be published. `blocked` means publish nothing at all."""

    parts: list[str]
    decisions: list[GuardDecision]
    blocked: bool


def fold(text: str) -> str:
    """The form used for every safety check: NFKC, then the look-alikes NFKC does not fold."""
    normalised = unicodedata.normalize("NFKC", text)
    return "".join(LOOKALIKES.get(ch, ch) for ch in normalised)


def _is_skippable(ch: str) -> bool:
    """What CyTube strips or blanks before it looks for `/`, plus anything invisible.

    Combining marks are skipped too: a mark cannot start a command in CyTube, and skipping it
    errs on the safe side (a part starting with one is checked as if it were not there).
    """
    return (
        ch.isspace()
        or is_control(ch)
        or is_invisible(ch)
        or unicodedata.category(ch) in {"Mn", "Me", "Zs", "Zl", "Zp"}
    )


def _folded_prefixes(prefixes: Sequence[str]) -> list[str]:
    """The prefixes as checked: folded, and always including CyTube's `/`."""
    folded = {f for f in (fold(p).strip() for p in (*ALWAYS_NEUTRALISED, *prefixes)) if f}
    return sorted(folded, key=len, reverse=True)


def _command_prefix_end(text: str, prefixes: Sequence[str]) -> int | None:
    """Index just past the leading command prefix (and blanks before it), or None if none.

    Works character by character on the original text so the returned index can be used to
    cut it; each character is folded on its own (NFKC never merges a prefix character with the
    next one, and prefixes are short).
    """
    folded_prefixes = _folded_prefixes(prefixes)
    index = 0
    while index < len(text):
        ch = text[index]
        folded = fold(ch)
        if not folded or all(_is_skippable(c) for c in folded):
            index += 1
            continue
        break
    for prefix in folded_prefixes:
        position, matched = index, ""
        while position < len(text) and len(matched) < len(prefix):
            matched += fold(text[position])
            position += 1
        if matched.startswith(prefix):
            return position
    return None


def is_command_like(text: str, prefixes: Sequence[str]) -> bool:
    """True if `text`, after what CyTube strips and after folding look-alikes, starts with `/`
    or one of `prefixes`. This is the invariant every published part must fail."""
    folded = fold(text)
    start = 0
    while start < len(folded) and _is_skippable(folded[start]):
        start += 1
    rest = folded[start:]
    return any(rest.startswith(p) for p in _folded_prefixes(prefixes)) or (
        _command_prefix_end(text, prefixes) is not None
    )


def command_prefixes(processing: MessageProcessingSettings) -> list[str]:
    """The prefixes the guard neutralises: the configured ones, and always `/`."""
    configured = list(processing.command_prefixes)
    return [*ALWAYS_NEUTRALISED, *(p for p in configured if p not in ALWAYS_NEUTRALISED)]


def normalise_part(text: str) -> str:
    """Control characters to spaces (as CyTube does), invisibles out, NFKC, single spaces.

    Invisibles go both before NFKC (so they cannot block a composition that would otherwise
    happen on a second pass) and after it, which makes the guard idempotent.
    """
    text = remove_invisible(controls_to_spaces(text[:MAX_INPUT_CHARS]))
    text = remove_invisible(controls_to_spaces(unicodedata.normalize("NFKC", text)))
    return collapse_whitespace(text)


def link_host(link: str) -> str:
    """The lower-case host of a URL or bare domain, IDNA-decoded where possible."""
    candidate = link if "://" in link else f"http://{link}"
    try:
        host = urlsplit(candidate).hostname or ""
    except ValueError:
        host = ""
    host = host.lower().rstrip(".")
    labels = []
    for label in host.split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError):
                label = label.encode("ascii").decode("idna")
        labels.append(label)
    return ".".join(labels)


def domain_matches(host: str, domains: Sequence[str]) -> bool:
    """`host` is one of `domains` or a subdomain of one."""
    return any(host == d or host.endswith("." + d) for d in domains)


def skeleton(text: str) -> tuple[str, list[int]]:
    """`text` as a host name reader sees it, and where each of its characters came from.

    Look-alike letters and dots become their Latin letter and `.`, letters are lower-cased
    (one character to one), and a disguised dot (`[.]`, ` (dot) `) becomes `.`. `origin[i]`
    is the index in `text` of the skeleton's character `i`, so a match can be cut from the
    text. Linear in the length of `text`.
    """
    mapped = "".join(c if len(low := c.lower()) != 1 else low for c in text.translate(SKELETON))
    out: list[str] = []
    origin: list[int] = []
    position = 0
    for match in _DISGUISED_DOT.finditer(mapped):
        out.append(mapped[position : match.start()])
        origin.extend(range(position, match.start()))
        out.append(".")
        origin.append(match.start())
        position = match.end()
    out.append(mapped[position:])
    origin.extend(range(position, len(mapped)))
    return "".join(out), origin


def _words_around(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen `start:end` to the whitespace-separated words it touches."""
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return start, end


class OutputGuard:
    """Checks and fixes the parts of one reply; see the module docstring for the steps."""

    def __init__(self, processing: MessageProcessingSettings, safety: SafetySettings) -> None:
        self._processing = processing
        self._safety = safety
        self._prefixes = command_prefixes(processing)
        words = [w.strip() for w in safety.blocked_words if w.strip()]
        self._blocked_words = (
            re.compile(
                r"(?<!\w)(?:" + "|".join(re.escape(fold(w)) for w in words) + r")(?!\w)",
                re.IGNORECASE,
            )
            if words
            else None
        )
        self._blocked_patterns = [re.compile(p, re.IGNORECASE) for p in safety.blocked_patterns]

    def check(self, parts: list[str]) -> GuardResult:
        """Return the parts that may be published, the decisions taken, and whether to block."""
        decisions: list[GuardDecision] = []
        cleaned: list[str] = []
        for part in parts:
            if not isinstance(part, str):  # a caller bug must not become a crash or a post
                self._decide(decisions, "dropped", f"part is {type(part).__name__}, not text")
                continue
            text = self._redact(normalise_part(part), decisions)
            text, block_reason = self._apply_blocklist(text, decisions)
            if block_reason is None:
                text, block_reason = self._apply_link_policy(text, decisions)
            if block_reason is not None:
                return self._blocked(decisions, block_reason)
            cleaned.extend(self._fit(text, decisions))
        published = self._finish(cleaned, decisions)
        if not published:
            return self._blocked(decisions, "nothing left to publish")
        return GuardResult(parts=published, decisions=decisions, blocked=False)

    # --- steps ----------------------------------------------------------------------------------

    def _redact(self, text: str, decisions: list[GuardDecision]) -> str:
        """Secrets and key shapes out: a model quoting its own key must not post it."""
        cleaned = redact_text(text)
        if cleaned != text:
            self._decide(decisions, "redacted", "secret or key-shaped text")
        return cleaned

    def _apply_blocklist(self, text: str, decisions: list[GuardDecision]) -> tuple[str, str | None]:
        """Block the reply, or redact the matches, per `blocked_action`."""
        checks: list[tuple[re.Pattern[str], str]] = [
            (p, f"blocked pattern {p.pattern!r}") for p in self._blocked_patterns
        ]
        if self._blocked_words is not None:
            checks.insert(0, (self._blocked_words, "blocked word"))
        for pattern, reason in checks:
            target = fold(text)
            if not pattern.search(target):
                continue
            if self._safety.blocked_action == "block":
                return text, reason
            text = collapse_whitespace(pattern.sub(" ", target))
            self._decide(decisions, "redacted", reason)
        return text, None

    def _apply_link_policy(
        self, text: str, decisions: list[GuardDecision]
    ) -> tuple[str, str | None]:
        """Strip or block links, and never keep a link to a blocked domain."""
        policy = self._safety.link_policy
        scan = text.replace("\u3002", ".")  # same length: spans stay aligned with `text`
        spans: list[tuple[int, int, str]] = []
        for match in _URL.finditer(scan):
            start, end = match.span()
            while end > start and scan[end - 1] in _TRAILING_PUNCTUATION:
                end -= 1
            link = scan[start:end]
            host = link_host(link)
            if domain_matches(host, self._safety.blocked_link_domains):
                spans.append((start, end, f"link to blocked domain {host!r}"))
            elif policy == "block":
                return text, f"link to {host!r} (link_policy=block)"
            elif policy == "strip":
                spans.append((start, end, f"link to {host!r} (link_policy=strip)"))
            elif self._safety.allowed_link_domains and not domain_matches(
                host, self._safety.allowed_link_domains
            ):
                spans.append((start, end, f"link to {host!r} not in allowed_link_domains"))
        if self._safety.blocked_link_domains:
            for match in _DOMAIN.finditer(scan):
                host = link_host(match.group(1))
                if domain_matches(host, self._safety.blocked_link_domains):
                    spans.append((*match.span(1), f"blocked domain {host!r}"))
        text = self._cut_spans(text, spans, decisions)
        return self._cut_disguised_domains(text, decisions), None

    def _cut_disguised_domains(self, text: str, decisions: list[GuardDecision]) -> str:
        """Cut the words that still name a blocked domain once read as a host name reader would
        (`evil[.]com`, `evil (dot) com`, Cyrillic or Greek look-alike letters, odd dots)."""
        blocked = self._safety.blocked_link_domains
        if not blocked:
            return text
        view, origin = skeleton(text)
        spans: list[tuple[int, int, str]] = []
        for match in _DOMAIN.finditer(view):
            host = skeleton(link_host(match.group(1)))[0]
            if domain_matches(host, blocked):
                start, end = match.span(1)
                words = _words_around(text, origin[start], origin[end - 1] + 1)
                spans.append((*words, f"disguised link to blocked domain {host!r}"))
        return self._cut_spans(text, spans, decisions)

    def _cut_spans(
        self, text: str, spans: list[tuple[int, int, str]], decisions: list[GuardDecision]
    ) -> str:
        if not spans:
            return text
        out: list[str] = []
        position = 0
        for start, end, reason in sorted(spans):
            if end <= position:
                continue
            out.append(text[position : max(start, position)])
            position = end
            self._decide(decisions, "stripped", reason)
        out.append(text[position:])
        return collapse_whitespace(" ".join(out))

    def _fit(self, text: str, decisions: list[GuardDecision]) -> list[str]:
        """Re-split a part over the limit (the formatter should have; the guard makes sure)."""
        limit = self._processing.max_message_length
        if utf16_len(text) <= limit:
            return [text] if text else []
        pieces = split_text(
            text, limit, self._processing.continuation_indicator, self._processing.max_parts
        )
        self._decide(decisions, "resplit", f"part of {utf16_len(text)} units over {limit}")
        return pieces

    def _neutralise(self, text: str, decisions: list[GuardDecision]) -> str:
        """Drop leading command characters until the part no longer looks like a command."""
        removed = ""
        for _ in range(len(text) + 1):
            if not is_command_like(text, self._prefixes):
                break
            end = _command_prefix_end(text, self._prefixes)
            if end is None:  # only the whole-text view matched; cut blanks and one character
                end = len(text) - len(text.lstrip()) + 1
            removed += text[:end]
            text = collapse_whitespace(text[end:])
        if removed:
            self._decide(decisions, "neutralised", f"leading {removed.strip()!r} removed")
        return text if not is_command_like(text, self._prefixes) else ""

    def _finish(self, parts: list[str], decisions: list[GuardDecision]) -> list[str]:
        """Neutralise, drop empties, keep `max_parts`, and verify every invariant once more."""
        limit = self._processing.max_message_length
        kept: list[str] = []
        for part in parts:
            text = self._neutralise(part, decisions)
            if not text:
                self._decide(decisions, "dropped", "part empty after cleaning")
                continue
            if utf16_len(text) > limit or is_command_like(text, self._prefixes) or has_secret(text):
                self._decide(decisions, "dropped", "part failed the final check")
                log.warning("output guard dropped a part that failed its final check")
                continue
            kept.append(text)
        if len(kept) > self._processing.max_parts:
            self._decide(
                decisions,
                "truncated",
                f"{len(kept)} parts, only {self._processing.max_parts} allowed",
            )
            kept = kept[: self._processing.max_parts]
        return kept

    def _blocked(self, decisions: list[GuardDecision], reason: str) -> GuardResult:
        self._decide(decisions, "blocked", reason)
        return GuardResult(parts=[], decisions=decisions, blocked=True)

    @staticmethod
    def _decide(decisions: list[GuardDecision], action: str, reason: str) -> None:
        decisions.append(GuardDecision(action, reason))
        level = logging.INFO if action in {"blocked", "neutralised", "dropped"} else logging.DEBUG
        log.log(level, "output guard %s: %s", action, reason)
