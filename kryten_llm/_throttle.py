"""Count a recurring problem, but report it at most once per interval.

A flood (a full queue, a broken feed) must not become a flood of log lines: each place that
drops or skips something counts every occurrence and logs only when `note()` says so, with
how many happened since the last report.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ThrottledCount:
    """Occurrences in total and since the last report; reports at most every interval."""

    def __init__(
        self, interval_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_seconds = interval_seconds
        self.total = 0
        self._clock = clock
        self._since_report = 0
        self._last_report: float | None = None

    def note(self, now: float | None = None, *, count: int = 1) -> int | None:
        """Count `count` (one by default, a whole batch when many are lost at once); return
        how many since the last report when it is time to report."""
        self.total += count
        self._since_report += count
        now = self._clock() if now is None else now
        if self._last_report is not None and now - self._last_report < self.interval_seconds:
            return None
        since, self._since_report, self._last_report = self._since_report, 0, now
        return since
