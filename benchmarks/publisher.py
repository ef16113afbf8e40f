"""Flood publisher, run as its own process so its CPU never competes inside the service's loop.

`python -m benchmarks.publisher --url nats://127.0.0.1:PORT --channel C --domain D --count N`
publishes N non-triggering chatMsg events exactly as the bridge encodes them, from `--users`
distinct users in turn, then one mention carrying `--mention-text`, and prints one JSON line:
when the first, last and mention publishes happened (CLOCK_MONOTONIC, which is system-wide on
Linux, so the orchestrator can compare it with its own clock) and the CPU time it used.

Encoding one envelope per message with `json.dumps` would cost the publisher more CPU than the
service spends decoding it, so each batch builds one envelope with `kryten_llm.tools.simulate`
(fresh `timestamp`, `correlation_id` and `time`) and substitutes the username and the line
number into its bytes: every message is still byte-for-byte what the bridge would publish for
that line.
The loop is bounded by `--count`; `--rate` paces it (messages per second, 0 = as fast as the
connection allows) in batches 2.5 ms apart (50 messages at 20,000/s), and every batch ends with
a flush, so the client buffer stays bounded and the bursts stay small and steady.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import nats

from kryten_llm.events import chat_subject
from kryten_llm.tools.simulate import chat_payload, envelope

USER_MARK = "BENCHUSERMARK"
LINE_MARK = "BENCHLINEMARK"
LINE_TEXT = f"that's a great fight scene, the kick at {LINE_MARK} was wild"
BATCH_SECONDS = 0.0025  # paced floods go out in batches this far apart: small, steady bursts
UNPACED_BATCH_MESSAGES = 500
CONNECT_TIMEOUT_SECONDS = 5.0
FLUSH_TIMEOUT_SECONDS = 30.0


def batch_template(channel: str, domain: str) -> bytes:
    """One bridge envelope with placeholders where the username and line number go."""
    return envelope("chatMsg", chat_payload(USER_MARK, LINE_TEXT), channel, domain)


def message(template: bytes, user: bytes, line: bytes) -> bytes:
    return template.replace(USER_MARK.encode(), user).replace(LINE_MARK.encode(), line)


async def flood(args: argparse.Namespace) -> dict[str, float | int]:
    nc = await nats.connect(args.url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    subject = chat_subject(args.channel, "chatMsg")
    users = [f"{args.user_prefix}{n:06d}".encode() for n in range(args.users)]
    batch = max(1, round(args.rate * BATCH_SECONDS)) if args.rate > 0 else UNPACED_BATCH_MESSAGES
    interval = batch / args.rate if args.rate > 0 else 0.0
    cpu_start = time.process_time()
    first = time.monotonic()
    sent = 0
    last = first
    try:
        while sent < args.count:
            template = batch_template(args.channel, args.domain)
            end = min(sent + batch, args.count)
            for index in range(sent, end):
                data = message(template, users[index % args.users], str(index).encode())
                await nc.publish(subject, data)
            sent = end
            await nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
            if interval:
                delay = first + (sent / batch) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        last = time.monotonic()
        mention = envelope(
            "chatMsg", chat_payload(args.mention_user, args.mention_text), args.channel, args.domain
        )
        mention_at = time.monotonic()
        await nc.publish(subject, mention)
        await nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
    finally:
        await nc.close()
    return {
        "first": first,
        "last": last,
        "mention": mention_at,
        "count": sent,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--user-prefix", default="viewer")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 = unpaced")
    parser.add_argument("--mention-user", required=True)
    parser.add_argument("--mention-text", required=True)
    args = parser.parse_args(argv)
    if not args.url.startswith("nats://127.0.0.1:"):
        parser.error("the benchmark only talks to a local server (nats://127.0.0.1:PORT)")
    if args.count < 0 or args.users < 1:
        parser.error("--count must be >= 0 and --users >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(asyncio.run(flood(parse_args(argv)))), flush=True)


if __name__ == "__main__":
    main()
