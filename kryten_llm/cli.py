"""The `kryten-llm` command: run the service, check a config, or run the offline demo.

Every failure an operator can cause (a missing file, bad JSON, an invalid field) ends in a
readable message and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kryten_llm import __version__
from kryten_llm.config import (
    ConfigError,
    describe_provider,
    env_override_note,
    load_settings,
    missing_key_warnings,
    provider_order,
)
from kryten_llm.logsetup import LOG_FORMATS, setup_logging

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kryten-llm",
        description="An in-character LLM chat bot for CyTube channels on the Kryten NATS bus.",
    )
    parser.add_argument("--version", action="version", version=f"kryten-llm {__version__}")
    parser.add_argument("--config", type=Path, help="JSON config file (default: embedded)")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="default INFO (WARNING for the demo, so the chat stays readable)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("KRYTEN_LLM_LOG_FORMAT", "text"),
        help="text, or one JSON object per line (default: $KRYTEN_LLM_LOG_FORMAT or text)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="run everything but post nothing; log each line"
    )
    parser.add_argument(
        "--validate-config", action="store_true", help="check the config, report, and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the service (the default)")
    demo = sub.add_parser(
        "demo", help="start a local NATS server, the bot and a scripted chat, and show it talk"
    )
    demo.add_argument("--lines", type=int, default=8, help="how many scripted chat lines")
    sub.add_parser(
        "check",
        help="probe the bus (credentials, KV buckets) and every provider with a real "
        "completion; exit 0 only if the bus and each chain's first provider work",
    )
    ask = sub.add_parser(
        "ask",
        help="one chat line through the bot's decisions, prompt, providers and formatter, "
        "without a bus: what it would say, or why not",
    )
    ask.add_argument("text", help="the chat line, as a user would type it")
    ask.add_argument("--user", default="Tester", help="who says it (default Tester)")
    ask.add_argument("--channel", help="configured channel, name or domain/name (default: first)")
    ask.add_argument("--show-prompt", action="store_true", help="print every prompt sent")
    ask.add_argument("--seed", type=int, help="seed for the trigger-word dice (default: random)")
    demo.add_argument(
        "--stay", action="store_true", help="keep the bus and bot up after the script (API)"
    )
    stats = sub.add_parser("stats", help="summarise a JSONL response log")
    stats.add_argument("logfile", type=Path)
    stats.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw charts")
    stats.add_argument(
        "--rotated", action="store_true", help="include rotated files (LOGFILE.1, .2, ...)"
    )
    replay = sub.add_parser(
        "replay", help="run a recorded chat through the bot's decisions offline, and report"
    )
    replay.add_argument("transcript", type=Path, help="bridge events as JSONL, or user: message")
    replay.add_argument(
        "--config", type=Path, dest="replay_config", metavar="PATH", help="JSON config file"
    )
    replay.add_argument("--seed", type=int, default=1, help="seed for trigger rolls (default 1)")
    replay.add_argument(
        "--llm",
        choices=("offline", "configured"),
        default="offline",
        help="the offline Markov stand-in (default) or the configured providers",
    )
    replay.add_argument(
        "--interval", type=float, default=5.0, help="seconds between untimed lines (default 5)"
    )
    replay.add_argument("--channel", help="configured channel to replay into (default: first)")
    replay.add_argument("--jsonl", type=Path, metavar="OUT", help="write the records here")
    return parser


def validate_config(path: Path | None, log_format: str = "text", dry_run: bool = False) -> int:
    """Check the config offline and report what it configures; `kryten-llm check` goes live.

    `dry_run` is `--dry-run` on the same command line: it is reported as the run would see it.
    A provider whose `api_key_env` names an unset variable is valid config but cannot be
    called: it is warned about, naming the provider and the variable, never a value.
    """
    setup_logging("WARNING", log_format)  # warnings about a valid file are shown, not lost
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    source = str(path) if path else "(embedded defaults)"
    channels = ", ".join(f"{c.domain}/{c.channel}" for c in settings.channels)
    dry = dry_run or settings.testing.dry_run
    print(f"Configuration {source} is valid.")
    print(f"  channels:  {channels}")
    print("  providers, in the order a reply tries them:")
    for number, name in enumerate(provider_order(settings.llm_providers), 1):
        print(f"    {number}. {describe_provider(name, settings.llm_providers[name])}")
    print(f"  triggers:  {len(settings.triggers)}")
    print(f"  dry run:   {'on' if dry else 'off'}" + (" (--dry-run)" if dry_run else ""))
    for warning in missing_key_warnings(settings.llm_providers):
        print(f"  warning: {warning}")
    note = env_override_note()
    if note:
        print(f"  note: {note}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.validate_config:
        return validate_config(args.config, args.log_format, args.dry_run)
    if args.command == "check":
        from kryten_llm.tools.check import run_check

        return run_check(args.config, args.log_level)
    if args.command == "ask":
        from kryten_llm.tools.ask import run_ask

        return run_ask(
            args.config,
            args.text,
            args.user,
            args.channel,
            args.show_prompt,
            args.seed,
            args.log_level,
        )
    if args.command == "stats":
        from kryten_llm.tools.stats import run_stats

        return run_stats(args.logfile, args.plot, sys.stdout, include_rotated=args.rotated)
    if args.command == "replay":
        from kryten_llm.tools.replay import ReplayOptions, run_replay

        options = ReplayOptions(args.seed, args.llm, args.interval, args.channel, args.jsonl)
        return run_replay(
            args.transcript, args.replay_config or args.config, options, args.log_level
        )
    log_level = args.log_level or ("WARNING" if args.command == "demo" else "INFO")
    setup_logging(log_level, args.log_format)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    if args.dry_run:
        settings.testing.dry_run = True
    if args.command == "demo":
        from kryten_llm.tools.demo import run_demo

        return asyncio.run(
            run_demo(settings, log_level, lines=args.lines, config_path=args.config, stay=args.stay)
        )
    from kryten_llm.daemon.service import run_service

    return asyncio.run(run_service(settings, log_level, args.config, args.dry_run))
