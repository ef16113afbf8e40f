"""Plain-text tables for the two terminal reports, `kryten-llm stats` and `kryten-llm replay`.

Both print names and reasons taken from chat or from a log, which are untrusted: `safe` is the
one place they are made fit for a terminal.
"""

from __future__ import annotations

DISPLAY_NAME_CHARS = 32


def safe(text: str, limit: int = DISPLAY_NAME_CHARS) -> str:
    """Untrusted text made safe for a terminal: no control characters, bounded length."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def table(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Aligned columns: the first `text_columns` left-aligned (names), the rest right (numbers)."""
    if not rows:
        return ["  (none)"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        parts = [
            c.ljust(w) if i < text_columns else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def percent(part: int, whole: int) -> str:
    """`part` as a share of `whole`, one decimal; `-` when there is no whole to share."""
    return f"{100 * part / whole:.1f}%" if whole else "-"
