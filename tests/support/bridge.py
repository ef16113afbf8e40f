"""Speak to the service as the Kryten bridge does: same subjects, same bytes, same envelopes.

`Bridge.chat()` publishes a chatMsg exactly as Kryten-Robot would (Python `json.dumps` with
its default `", "` separators and `\\uXXXX` escapes, the payload as CyTube sent it), and
`Bridge.commands` collects what services publish on `kryten.robot.command`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS

from kryten_llm.events import chat_subject
from kryten_llm.tools.simulate import cytube_escape, envelope, now_ms

COMMAND_SUBJECT = "kryten.robot.command"
__all__ = ["Bridge", "cytube_escape", "envelope", "now_ms"]


@dataclass
class Bridge:
    nc: NATS
    commands: list[dict[str, Any]] = field(default_factory=list)
    command_times: list[float] = field(default_factory=list)
    _new_command: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(cls, url: str) -> Bridge:
        bridge = cls(await nats.connect(url))
        await bridge.nc.subscribe(COMMAND_SUBJECT, cb=bridge._on_command)
        await bridge.nc.flush()
        return bridge

    async def _on_command(self, msg: Any) -> None:
        self.commands.append(json.loads(msg.data))
        self.command_times.append(asyncio.get_running_loop().time())
        self._new_command.set()

    async def publish(
        self, channel: str, event_name: str, payload: Any, domain: str = "cytu.be"
    ) -> None:
        data = envelope(event_name, payload, channel, domain)
        await self.nc.publish(chat_subject(channel, event_name), data)
        await self.nc.flush()

    async def chat(
        self,
        channel: str,
        username: str,
        text: str,
        *,
        domain: str = "cytu.be",
        time_ms: int | None = None,
        meta: dict[str, Any] | None = None,
        escape: bool = True,
    ) -> None:
        payload = {
            "username": username,
            "msg": cytube_escape(text) if escape else text,
            "meta": meta or {},
            "time": now_ms() if time_ms is None else time_ms,
        }
        await self.publish(channel, "chatMsg", payload, domain)

    async def change_media(
        self, channel: str, title: str, *, domain: str = "cytu.be", seconds: int = 213
    ) -> None:
        payload = {
            "id": "dQw4w9WgXcQ",
            "title": title,
            "seconds": seconds,
            "duration": "03:33",
            "type": "yt",
            "meta": {},
            "currentTime": 0,
            "paused": False,
        }
        await self.publish(channel, "changeMedia", payload, domain)

    def says(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [
            c
            for c in self.commands
            if c.get("command") == "say" and (channel is None or c["meta"]["channel"] == channel)
        ]

    async def wait_for_says(
        self,
        count: int,
        timeout: float = 10.0,
        channel: str | None = None,
    ) -> list[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.says(channel)) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._new_command.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_command.wait(), timeout=min(remaining, 0.5))
        return self.says(channel)

    async def quiet_for(self, seconds: float) -> None:
        """Wait, so a test can assert that nothing was published meanwhile."""
        await asyncio.sleep(seconds)

    def clear(self) -> None:
        self.commands.clear()
        self.command_times.clear()

    async def close(self) -> None:
        await self.nc.close()
