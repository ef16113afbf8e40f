"""The floor: the least any service can do for a mention, to calibrate the overhead target.

`python -m benchmarks.floor --url nats://127.0.0.1:PORT --llm http://127.0.0.1:PORT/v1`

A bare nats-py + aiohttp process that does only the unavoidable hops of a reply: receive the
chatMsg, json-decode it, POST one chat completion to the LLM (non-streaming) and publish one
`say` command. No kryten-py, no filters, limits, prompt, formatting, guard or logging. Measured
with exactly the same harness as the real service (`benchmarks.run --floor`), its overhead is
what this machine's loopback TCP, event loop and interpreter cost; the real service's figure
minus this one is what kryten-llm's own code adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import nats

from kryten_llm.events import chat_subject

COMMAND_SUBJECT = "kryten.robot.command"
HTTP_TIMEOUT_SECONDS = 10.0
READY_SUBJECT = "kryten.lifecycle.llm.startup"


async def serve(url: str, llm_base_url: str, channel: str, bot: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(url, connect_timeout=5)
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def answer(envelope: dict[str, Any]) -> None:
            payload = envelope["payload"]
            body = {
                "model": "bench-model",
                "messages": [{"role": "user", "content": payload["msg"]}],
            }
            async with session.post(f"{llm_base_url}/chat/completions", json=body) as response:
                reply = await response.json()
            text = reply["choices"][0]["message"]["content"]
            command = {
                "command": "say",
                "args": {"message": text},
                "meta": {
                    "source": "floor",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "domain": envelope["domain"],
                    "channel": envelope["channel"],
                    "request_id": str(uuid.uuid4()),
                },
            }
            await nc.publish(COMMAND_SUBJECT, json.dumps(command).encode())

        async def on_chat(msg: Any) -> None:
            envelope = json.loads(msg.data)
            if bot.lower() in str(envelope["payload"].get("msg", "")).lower():
                task = asyncio.create_task(answer(envelope))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        await nc.subscribe(chat_subject(channel, "chatMsg"), cb=on_chat)
        await nc.flush()
        await nc.publish(READY_SUBJECT, b"{}")
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await nc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--llm", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--bot", required=True)
    args = parser.parse_args(argv)
    for address in (args.url, args.llm):
        if "://127.0.0.1:" not in address:
            parser.error("the floor only talks to local servers on 127.0.0.1")
    asyncio.run(serve(args.url, args.llm, args.channel, args.bot))


if __name__ == "__main__":
    main()
