"""Logging for the process: one handler on the root logger, and kryten-py kept in line.

kryten-py calls `setLevel()` on its own logger with its config's level when a client is
built, which would override the operator's `--log-level`; the service passes the same level
to kryten-py and `apply_level` re-asserts it after the client exists.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
QUIET_LIBRARIES = ("aiohttp.access", "asyncio")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    apply_level(level)


def apply_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    logging.getLogger("kryten").setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
