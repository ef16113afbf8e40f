"""Refuse operator regular expressions that can backtrack catastrophically, before they run.

Trigger patterns run on every chat line and blocklists on every reply, in Python's
backtracking `re`, on the event loop: a pattern such as `(a+)+$` takes seconds on thirty
characters, so one bad pattern in a config file lets any chatter stall the bot. Python's `re`
cannot be given a time limit, so the check is static, on the parsed pattern (`re._parser`,
the parser `re.compile` itself uses), and conservative: it refuses every pattern in which a
repeated group can match the same text in more than one way, and a few safe ones with it.
A regex library with timeouts would be the other way; a static check costs no dependency,
runs once at load time, and tells the operator which construct to rewrite.

Inside a group repeated more than once (`*`, `+`, `{2,}`), it refuses:
- another quantifier that can vary its count (`(a+)+`, `(.*)*`, `(\\w+\\s?)+`);
- an optional part, or an alternative that can match nothing, whose first characters
  overlap what can follow it in the group (`(aa?)*`, `(a|aa)*`);
- two alternatives that can match the same text (`(a|a)*`, `(a|ab|b)*`).
Possessive quantifiers and atomic groups never backtrack into themselves, so they are
accepted. Overlapping sequences such as `.*a.*b` are polynomial, not exponential; they are
not refused here (the text they run on is bounded: chat by `listener.max_chat_chars`,
replies by the validation and formatting limits).

`re._parser` is private, but it is the parser of every supported Python (3.11 renamed it
from `sre_parse`); the tests pin which patterns are refused and which are not.
"""

from __future__ import annotations

import importlib
import itertools
from typing import Any

_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

_REPEATS = frozenset({_constants.MAX_REPEAT, _constants.MIN_REPEAT})
_BOUNDARIES = frozenset({_constants.POSSESSIVE_REPEAT, _constants.ATOMIC_GROUP})
_ZERO_WIDTH = frozenset({_constants.AT, _constants.ASSERT, _constants.ASSERT_NOT})
SPAN_EXPANDED_MAX = 256
"""A character range up to this wide is compared character by character; a wider one (or a
category such as `\\w`) is taken to overlap with anything."""

Chars = frozenset[str] | None
"""The characters a part can start with; None when that is too many to list."""


def backtracking_risk(pattern: str) -> str | None:
    """Why `pattern` can backtrack catastrophically, or None when it cannot (as far as seen).

    `pattern` must already compile; a pattern the parser rejects is not judged here.
    """
    return _walk(_parser.parse(pattern), inside=False, follow=frozenset())


def _walk(items: Any, *, inside: bool, follow: Chars) -> str | None:
    """Check a sequence; `follow` is what can come right after it within one repetition."""
    parsed = list(items)
    afters = _follows(parsed, follow) if inside else [follow] * len(parsed)
    for (op, av), after in zip(parsed, afters, strict=True):
        reason = _check(op, av, inside=inside, follow=after)
        if reason is not None:
            return reason
    return None


def _follows(items: list[Any], follow: Chars) -> list[Chars]:
    """For each item, the characters that can come right after it."""
    result: list[Chars] = []
    after = follow
    for op, av in reversed(items):
        result.append(after)
        chars, empty = _first_of(op, av)
        after = _union(chars, after) if empty else chars
    return result[::-1]


def _check(op: Any, av: Any, *, inside: bool, follow: Chars) -> str | None:
    """The risk in one parsed item; `inside` says whether a repeated group encloses it."""
    if op in _REPEATS:
        low, high, sub = av
        first = _first(sub)[0]
        if inside and high > 1 and low != high and sub.getwidth()[1] > 0:
            return "a quantifier inside a repeated group"
        if inside and low == 0 and high == 1 and _overlap(first, follow):
            return "an optional part that can start like what follows it in a repeated group"
        if high > 1:  # the next repetition may follow the body
            return _walk(sub, inside=True, follow=_union(first, follow) if inside else first)
        return _walk(sub, inside=inside, follow=follow)
    if op in _BOUNDARIES:  # never backtracked into: safe whatever is inside
        return _walk(av if op == _constants.ATOMIC_GROUP else av[2], inside=False, follow=follow)
    if op == _constants.BRANCH:
        reason = _branch_risk(av[1], follow) if inside else None
        for alternative in av[1]:
            reason = reason or _walk(alternative, inside=inside, follow=follow)
        return reason
    if op == _constants.SUBPATTERN:
        return _walk(av[3], inside=inside, follow=follow)
    if op in (_constants.ASSERT, _constants.ASSERT_NOT):
        return _walk(av[1], inside=inside, follow=follow)
    if op == _constants.GROUPREF_EXISTS:
        yes = _walk(av[1], inside=inside, follow=follow)
        return yes or (_walk(av[2], inside=inside, follow=follow) if av[2] is not None else None)
    return None


def _branch_risk(alternatives: list[Any], follow: Chars) -> str | None:
    """Two alternatives inside a repeated group that can split the same text two ways."""
    parts = [(_literal_text(a), *_first(a)) for a in alternatives]
    for (text_a, first_a, empty_a), (text_b, first_b, empty_b) in itertools.combinations(parts, 2):
        if text_a is not None and text_b is not None:
            short, long = sorted((text_a, text_b), key=len)
            clash = short == long or (
                long.startswith(short) and _overlap(frozenset(long[len(short)]), follow)
            )
        else:
            clash = (
                (empty_a and empty_b)
                or _overlap(first_a, first_b)
                or (empty_a and _overlap(first_b, follow))
                or (empty_b and _overlap(first_a, follow))
            )
        if clash:
            return "alternatives that can match the same text inside a repeated group"
    return None


def _literal_text(items: Any) -> str | None:
    """The text a sequence of plain characters matches (lowercased), else None."""
    if not all(op == _constants.LITERAL for op, _ in items):
        return None
    return "".join(chr(code) for _, code in items).lower()


def _union(*sets: Chars) -> Chars:
    result: set[str] = set()
    for chars in sets:
        if chars is None:
            return None
        result |= chars
    return frozenset(result)


def _overlap(a: Chars, b: Chars) -> bool:
    """Whether two first sets may share a character (a wide set shares with any non-empty)."""
    if (a is not None and not a) or (b is not None and not b):
        return False
    if a is None or b is None:
        return True
    return bool(a & b)


def _first(items: Any) -> tuple[Chars, bool]:
    """The characters a sequence can start with, and whether it can match the empty string."""
    sets: list[Chars] = []
    for op, av in items:
        chars, empty = _first_of(op, av)
        sets.append(chars)
        if not empty:
            return _union(*sets), False
    return _union(*sets), True


def _first_of(op: Any, av: Any) -> tuple[Chars, bool]:
    if op == _constants.LITERAL:
        return frozenset({chr(av).lower()}), False
    if op == _constants.IN:
        return _class_chars(av), False
    if op in _ZERO_WIDTH:
        return frozenset(), True
    if op in _REPEATS or op == _constants.POSSESSIVE_REPEAT:
        chars, empty = _first(av[2])
        return chars, empty or av[0] == 0
    if op == _constants.SUBPATTERN:
        return _first(av[3])
    if op == _constants.ATOMIC_GROUP:
        return _first(av)
    if op == _constants.BRANCH:
        firsts = [_first(alternative) for alternative in av[1]]
        return _union(*(c for c, _ in firsts)), any(e for _, e in firsts)
    return None, op in (_constants.GROUPREF, _constants.GROUPREF_EXISTS)


def _class_chars(entries: Any) -> Chars:
    """The characters of a `[...]` class when it lists them, else None (wide)."""
    chars: set[str] = set()
    for op, av in entries:
        if op == _constants.LITERAL:
            chars.add(chr(av).lower())
        elif op == _constants.RANGE and av[1] - av[0] < SPAN_EXPANDED_MAX:
            chars.update(chr(code).lower() for code in range(av[0], av[1] + 1))
        else:
            return None
    return frozenset(chars)
