"""Run the real `kryten-llm` CLI with one proposed change applied in memory, to measure it.

`python -m benchmarks.service_variant VARIANT[,VARIANT...] -- <kryten-llm arguments>`

The benchmark does not edit `kryten_llm/`; a proposal is measured by starting the unchanged
service through this launcher, which patches exactly one thing before `cli.main()` runs.
The baseline is always started as plain `python -m kryten_llm`, never through here.

Variants:
  no-kryten-wildcard  kryten-py's `connect()` no longer subscribes `kryten.events.cytube.{ch}.>`
                      (its `_on_message` json-decodes and pydantic-validates every event, and
                      the server delivers every event to the service twice). Our listener's
                      own per-event subscriptions are untouched.
  lazy-emoji          `emoji` (imported by formatter.py for `max_emojis`) is loaded only on
                      first use instead of at start-up.
  tracemalloc         trace Python allocations and write the largest live ones at exit to
                      $BENCH_TRACEMALLOC_OUT (a profiling aid, not a proposal).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _no_kryten_wildcard() -> None:
    from kryten import KrytenClient

    async def _no_event_subscriptions(self: KrytenClient) -> None:
        return None

    KrytenClient._setup_subscriptions = _no_event_subscriptions  # type: ignore[method-assign]


def _lazy_emoji() -> None:
    """`emoji` (4.7 MiB with its JSON database) imported only when something first uses it."""
    import importlib
    import sys
    import types

    stub = types.ModuleType("emoji")

    def emoji_list(text: str) -> object:
        del sys.modules["emoji"]
        real = importlib.import_module("emoji")
        return real.emoji_list(text)

    stub.emoji_list = emoji_list  # type: ignore[attr-defined]
    sys.modules["emoji"] = stub


def _tracemalloc() -> None:
    """Trace Python allocations; at exit write the biggest live ones to $BENCH_TRACEMALLOC_OUT.

    Tracing roughly halves the service's speed: pace floods accordingly (`--memory-rate`).
    """
    import atexit
    import os
    import tracemalloc

    out = os.environ.get("BENCH_TRACEMALLOC_OUT", "tracemalloc.txt")
    tracemalloc.start(1)

    def dump() -> None:
        snapshot = tracemalloc.take_snapshot()
        lines = [f"traced now {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MB"]
        for key in ("filename", "lineno"):
            lines.append(f"-- top 30 by {key}")
            for stat in snapshot.statistics(key)[:30]:
                lines.append(f"{stat.size / 2**20:8.2f} MB {stat.count:9d} {stat.traceback[0]}")
        with open(out, "w", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")

    atexit.register(dump)


VARIANTS: dict[str, Callable[[], None]] = {
    "no-kryten-wildcard": _no_kryten_wildcard,
    "lazy-emoji": _lazy_emoji,
    "tracemalloc": _tracemalloc,
}


def main(argv: list[str]) -> int:
    names = argv[0].split(",") if argv else []
    if len(argv) < 2 or not names or any(n not in VARIANTS for n in names) or argv[1] != "--":
        print(
            f"usage: service_variant NAME[,NAME...] -- <kryten-llm args>; names: {list(VARIANTS)}"
        )
        return 2
    for name in names:
        VARIANTS[name]()
    from kryten_llm.cli import main as cli_main

    return cli_main(argv[2:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
