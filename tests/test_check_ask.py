"""`kryten-llm check` and `kryten-llm ask`, as real processes against the real nats-server and
local servers speaking each provider's wire format (one of them refusing, one key unset)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import KeyValueConfig

from tests.support.fake_providers import FakeProvider, reply, start_fake_provider, status
from tests.support.nats_server import NatsServer, free_port, start_nats_server

ROOT = Path(__file__).resolve().parents[1]
BOT = "CynthiaRothbot"
KEY = "sk-test-check-and-ask-never-printed-0123456789"
UNSET = "KLLM_TEST_CHECK_UNSET_KEY"


@dataclass
class Ran:
    returncode: int
    out: str
    err: str


async def kryten_llm(*args: str, env: dict[str, str] | None = None) -> Ran:
    """The real command, awaited, so this loop keeps serving the fake providers meanwhile."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KRYTEN_LLM_")}
    full_env.pop(UNSET, None)
    full_env.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kryten_llm",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=full_env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeProvider]:
    fake = await start_fake_provider("openai_compatible", model="chat-model")
    yield fake
    await fake.stop()


@pytest.fixture
async def anthropic_fake() -> AsyncIterator[FakeProvider]:
    fake = await start_fake_provider("anthropic", model="claude-fake")
    yield fake
    await fake.stop()


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    path.chmod(0o600)
    return path


def config(nats_url: str, providers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "nats": {"url": nats_url},
        "cytube": [{"domain": "cytu.be", "channel": "420Grindhouse", "username": BOT}],
        "personality": {"character_name": BOT, "name_variations": ["cynthia"]},
        "llm_providers": providers,
        "message_processing": {"split_delay_seconds": 0},
        **extra,
    }


# --- check ------------------------------------------------------------------------------------


def row(out: str, provider: str) -> list[str]:
    """The provider table's cells for `provider` (columns are two or more spaces apart)."""
    line = next(line for line in out.splitlines() if line.startswith(f"  {provider} "))
    return [cell for cell in re.split(r" {2,}", line.strip()) if cell]


async def test_check_passes_with_a_working_bus_and_providers_and_reads_the_kv_buckets(
    nats_server: NatsServer,
    openai_fake: FakeProvider,
    anthropic_fake: FakeProvider,
    tmp_path: Path,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.create_key_value(KeyValueConfig(bucket="kryten_420Grindhouse_userlist"))
        await js.create_key_value(KeyValueConfig(bucket="kryten_llm_memory"))
    finally:
        await nc.close()
    path = write_config(
        tmp_path,
        config(
            nats_server.url,
            {
                "main": {**openai_fake.settings().model_dump(mode="json"), "api_key": KEY},
                "claude": {
                    **anthropic_fake.settings().model_dump(mode="json"),
                    "api_key_env": "KLLM_TEST_CHECK_SET_KEY",
                    "priority": 200,
                },
            },
        ),
    )
    ran = await kryten_llm("--config", str(path), "check", env={"KLLM_TEST_CHECK_SET_KEY": KEY})
    assert ran.returncode == 0, ran.out + ran.err
    out = ran.out
    assert f"{nats_server.url} as no credentials: reachable, authorised" in out
    assert "JetStream: available" in out
    assert (
        "KV kryten_420Grindhouse_userlist (the bridge's ranks for cytu.be/420Grindhouse): "
        "present, readable"
    ) in out
    assert (
        "KV kryten_420Grindhouse_playlist (the bridge's video for cytu.be/420Grindhouse): "
        "absent (created when first needed)"
    ) in out
    assert "KV kryten_llm_memory (durable state): present, readable" in out
    main = row(out, "main")
    assert main[:5] == ["main", "openai_compatible", "chat-model", "inline", "ok"]
    assert main[5].endswith("ms") and main[6] == "-"
    claude = row(out, "claude")
    assert claude[:5] == [
        "claude",
        "anthropic",
        "claude-fake",
        "set (KLLM_TEST_CHECK_SET_KEY)",
        "ok",
    ]
    assert "OK: the bus works and the first provider of every chain answered" in out
    # One tiny real completion each, in each provider's own format, with the key.
    assert [r.path for r in openai_fake.requests] == ["/v1/chat/completions"]
    assert openai_fake.requests[0].body["max_tokens"] <= 32
    assert anthropic_fake.requests[0].headers["x-api-key"] == KEY
    assert KEY not in out + ran.err


async def test_check_fails_naming_the_unset_variable_and_the_refusing_provider(
    nats_server: NatsServer,
    openai_fake: FakeProvider,
    anthropic_fake: FakeProvider,
    tmp_path: Path,
) -> None:
    anthropic_fake.always(status(401, "invalid x-api-key"))
    path = write_config(
        tmp_path,
        config(
            nats_server.url,
            {
                "hosted": {
                    **openai_fake.settings(type="openrouter").model_dump(mode="json"),
                    "api_key_env": UNSET,
                    "priority": 1,
                },
                "refusing": {
                    **anthropic_fake.settings().model_dump(mode="json"),
                    "api_key": KEY,
                    "priority": 2,
                },
            },
            triggers=[{"name": "kf", "patterns": ["kung fu"], "provider": "refusing"}],
        ),
    )
    ran = await kryten_llm("--config", str(path), "check")
    assert ran.returncode == 1, ran.out + ran.err
    out = ran.out
    assert row(out, "hosted") == [
        "hosted",
        "openrouter",
        "chat-model",
        f"unset: {UNSET}",
        "skipped",
        "-",
        "key_unset",
    ]
    refusing = row(out, "refusing")
    assert refusing[4] == "FAILED" and refusing[6] == "http_401"
    assert "  refusing: authentication_error: invalid x-api-key" in out
    assert (
        f"chain default (mentions, triggers without a provider): its first provider hosted "
        f"failed (key_unset: {UNSET} is not set in this environment)"
    ) in out
    assert "chain trigger 'kf': its first provider refusing failed (http_401" in out
    assert openai_fake.requests == []  # a provider without its key is not called
    assert KEY not in out + ran.err


async def test_check_fails_on_refused_bus_credentials(
    openai_fake: FakeProvider, tmp_path: Path
) -> None:
    server = await asyncio.to_thread(start_nats_server, user="kryten", password="right-one")
    try:
        nats_cfg = {"url": server.url, "user": "kryten", "password": "wrong-one"}
        path = write_config(
            tmp_path,
            {
                **config(server.url, {"main": openai_fake.settings().model_dump(mode="json")}),
                "nats": nats_cfg,
            },
        )
        ran = await kryten_llm("--config", str(path), "check")
    finally:
        await asyncio.to_thread(server.stop)
    assert ran.returncode == 1
    assert f"{server.url} as user 'kryten': REFUSED (Authorization Violation)" in ran.out
    assert "the bus: auth (Authorization Violation)" in ran.out
    assert "wrong-one" not in ran.out + ran.err


async def test_check_with_no_bus_says_so(openai_fake: FakeProvider, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    path = write_config(
        tmp_path, config(url, {"main": openai_fake.settings().model_dump(mode="json")})
    )
    ran = await kryten_llm("--config", str(path), "check")
    assert ran.returncode == 1
    assert f"{url}: NOT REACHABLE (connection refused)" in ran.out
    assert "Traceback" not in ran.err


# --- ask ---------------------------------------------------------------------------------------


async def test_ask_prints_what_the_bot_would_post_and_the_prompt_sent(
    openai_fake: FakeProvider, tmp_path: Path
) -> None:
    openai_fake.always(reply("Roundhouse first. Questions later."))
    path = write_config(
        tmp_path,
        config(
            "nats://127.0.0.1:1",  # never used: ask needs no bus
            {"main": {**openai_fake.settings().model_dump(mode="json"), "api_key": KEY}},
            personality={
                "character_name": BOT,
                "name_variations": ["cynthia"],
                "response_style": "terse and theatrical",
            },
        ),
    )
    ran = await kryten_llm(
        "--config",
        str(path),
        "ask",
        "cynthia, best way out of a warehouse?",
        "--user",
        "Alice",
        "--show-prompt",
    )
    assert ran.returncode == 0, ran.out + ran.err
    out = ran.out
    assert "--- the prompt sent ---" in out
    assert "Style: terse and theatrical." in out
    assert "Alice says to you: <<<best way out of a warehouse?>>>" in out
    assert f"<{BOT}> Roundhouse first. Questions later." in out
    assert "(a mention from Alice in cytu.be/420Grindhouse; main/chat-model" in out
    assert "42+7 tokens" in out
    # The prompt printed is the one the provider received.
    sent = openai_fake.requests[0].body["messages"]
    assert "terse and theatrical" in sent[0]["content"]
    assert KEY not in out + ran.err


async def test_ask_falls_back_past_a_refusing_provider_and_notes_an_unset_key(
    openai_fake: FakeProvider, anthropic_fake: FakeProvider, tmp_path: Path
) -> None:
    anthropic_fake.always(status(401, "invalid x-api-key"))
    openai_fake.always(reply("Still standing."))
    path = write_config(
        tmp_path,
        config(
            "nats://127.0.0.1:1",
            {
                "refusing": {
                    **anthropic_fake.settings().model_dump(mode="json"),
                    "api_key_env": UNSET,
                    "priority": 1,
                },
                "backup": {**openai_fake.settings().model_dump(mode="json"), "priority": 2},
            },
        ),
    )
    ran = await kryten_llm("--config", str(path), "ask", f"{BOT} you ok?")
    assert ran.returncode == 0, ran.out + ran.err
    assert f"note: LLM provider 'refusing': api_key_env names {UNSET}" in ran.out
    assert f"<{BOT}> Still standing." in ran.out
    assert "backup/chat-model" in ran.out
    anthropic_fake.reset()
    anthropic_fake.always(status(401, "invalid x-api-key"))
    openai_fake.always(status(403, "forbidden"))
    failed = await kryten_llm("--config", str(path), "ask", f"{BOT} anyone there?")
    assert failed.returncode == 1
    assert "no reply (llm_failed): all providers failed (refusing=http_401, backup=http_403)" in (
        failed.out
    )


async def test_ask_says_which_gate_held_the_line_back_and_why(
    openai_fake: FakeProvider, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path,
        config(
            "nats://127.0.0.1:1",
            {"main": openai_fake.settings().model_dump(mode="json")},
            rate_limits={"global_max_per_hour": 0},
        ),
    )
    ran = await kryten_llm("--config", str(path), "ask", f"{BOT} hello?")
    assert ran.returncode == 1
    assert "held back by the rate limit gate (rate_limited): " in ran.out
    assert openai_fake.requests == []  # held back before any model was asked


async def test_ask_explains_a_line_that_triggers_nothing(
    openai_fake: FakeProvider, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path,
        config(
            "nats://127.0.0.1:1",
            {"main": openai_fake.settings().model_dump(mode="json")},
            triggers=[{"name": "kf", "patterns": ["kung fu"], "probability": 0.0}],
            spam={"other_bots": ["OtherBot"]},
        ),
    )
    plain = await kryten_llm("--config", str(path), "ask", "nice weather today")
    assert plain.returncode == 1
    assert "nothing triggers: the line names none of the bot's names" in plain.out
    dice = await kryten_llm("--config", str(path), "ask", "kung fu forever")
    assert "trigger word 'kf' matched, but its 0% chance did not come up" in dice.out
    bot = await kryten_llm("--config", str(path), "ask", f"{BOT} hi", "--user", "OtherBot")
    assert "not considered: another bot" in bot.out
    unknown = await kryten_llm("--config", str(path), "ask", "hi", "--channel", "nowhere")
    assert unknown.returncode == 2 and "channel 'nowhere' is not configured" in unknown.err
    assert openai_fake.requests == []


# --- the same, in this process (the commands' own code, as the coverage run sees it) -------


async def test_check_and_ask_in_process(
    nats_server: NatsServer, openai_fake: FakeProvider, anthropic_fake: FakeProvider
) -> None:
    from kryten_llm.config import build_settings
    from kryten_llm.tools.ask import ask, format_answer
    from kryten_llm.tools.check import format_report, run_checks

    anthropic_fake.always(status(401, "invalid x-api-key"))
    openai_fake.always(reply("Kick first."))
    settings = build_settings(
        config(
            nats_server.url,
            {
                "refusing": {**anthropic_fake.settings().model_dump(mode="json"), "priority": 1},
                "main": {**openai_fake.settings().model_dump(mode="json"), "priority": 2},
                "off": {"enabled": False},
            },
            usage={"on_budget_exhausted": "cheaper_provider", "cheaper_provider": "main"},
        ),
        "test",
    )
    report = await run_checks(settings, "test")
    text = format_report(report)
    assert report.problems() == [
        "chain default (mentions, triggers without a provider): its first provider refusing "
        "failed (http_401: authentication_error: invalid x-api-key)"
    ]
    assert "budget spent (usage.cheaper_provider): main -> refusing: main ok" in text
    assert row(text, "off")[4] == "disabled"
    command = format_answer(await ask(settings, "!chat help", "Alice"), BOT, show_prompt=True)
    assert "(no prompt was sent: the line never reached a model)" in command
    assert "(command 'help' from Alice in cytu.be/420Grindhouse; answered without a model)" in (
        command
    )
    answer = await ask(settings, f"{BOT} ready?", "Alice")
    shown = format_answer(answer, BOT, show_prompt=True)
    assert answer.replied and f"<{BOT}> Kick first." in shown
    assert "--- the prompt sent ---" in shown
    assert "[user]\nAlice says to you: <<<ready?>>>" in shown
