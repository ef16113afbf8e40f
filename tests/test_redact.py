"""The one redactor: configured secrets and key shapes out, ordinary chat untouched, linear time.

Plus each place that leans on it and has no end-to-end test of its own: the log filter (text
and JSON), the formatter and guard (a secret glued into a word too long for a line), the
sender's last check, provider error details, the config report, and JSON-ready values.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kryten_llm.config import (
    ConfigError,
    MessageProcessingSettings,
    PersonalitySettings,
    SafetySettings,
    build_settings,
    redact,
)
from kryten_llm.daemon.service import configured_secrets
from kryten_llm.daemon.systemd import SystemdNotifier
from kryten_llm.llm.providers import ProviderError, build_provider
from kryten_llm.logsetup import setup_logging
from kryten_llm.redact import (
    MARKER,
    SECRET_ANYWHERE_MIN_CHARS,
    SECRET_MIN_CHARS,
    Redactor,
    current,
    has_secret,
    redact_text,
    redact_value,
    set_secrets,
)
from kryten_llm.reply.formatter import ResponseFormatter
from kryten_llm.reply.guard import OutputGuard
from kryten_llm.reply.sender import ChatSender, unsafe_part
from kryten_llm.types import ChatLine, ChatMessage, LLMRequest
from tests.support import fake_providers as fp
from tests.support.fake_providers import FakeProvider
from tests.test_systemd import FakeSystemd, wait_until

HOSTILE_INPUT_CHARS = 1_000_000
HOSTILE_BOUND_SECONDS = 10.0
"""Generous: each case takes well under a second; a quadratic pattern would take hours."""

# Shaped like the real thing; none of them is a real credential.
KEY_SHAPES = {
    "openai": "sk-proj-Ab3dEf0123456789ghIJklMNopQRstUVwx",
    "anthropic": "sk-ant-api03-Zx9_y8W7v6U5t4S3r2Q1p0OnMlKjIhGfEdCbA-abcdefgh",
    "openrouter": "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef01234567",
    "google": "AIzaSyA-1234567890abcdefghijklmnopqrstu",
    "github": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "slack": "xoxb-1234567890-abcdefghijklmn",
    "huggingface": "hf_abcdefghijklmnopqrstuvwxyz012345",
    "groq": "gsk_abcdefghijklmnopqrstuvwxyz012345",
    "stripe": "sk_live_abcdefghijklmnop1234",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0",
}
# (text, the part that must go, what must stay)
LABELLED = [
    ("Authorization: Bearer abc123def456ghi789", "abc123def456ghi789", "Authorization:"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==", "dXNlcjpwYXNzd29yZDEyMw", "Authorization:"),
    ("api_key=abcd1234efgh", "abcd1234efgh", "api_key="),
    ('{"password": "hunter2hunter2"}', "hunter2hunter2", '"password": "'),
    ("x-api-key: zzzz-9999-yyyy", "zzzz-9999-yyyy", "x-api-key: "),
    ("nats://bot:s3cretpw@nats.example:4222", "s3cretpw", "@nats.example:4222"),
]
ORDINARY_CHAT = [
    "skip",
    "ask-me anything",
    "sk-8 is a skateboard",
    "task-force-assemble-everyone-now",
    "Basic instinct is a movie",
    "Basic misunderstandings happen",
    "bearer bonds",
    "Bearer of bad news, honestly",
    "the bearer certificates were lost",
    "the secret: practice every single day",
    "my password is long and boring",
    "token ring networks were a thing",
    "Asia is big, AKIA is not a word",
    "eyJ is how base64 JSON starts",
    "visit https://example.com/kicks?id=1 or mail bob@example.com",
    "ratio 3:2, meet at 5 @ the dojo",
    "keynote speakers: Bruce, Cynthia",
    "hf_ and gsk_ and xai- alone are prefixes",
    "A flying scissor kick, obviously.",
    "ｆｕｌｌｗｉｄｔｈ text is fine",
    "über-cool café ☕ kicks 🥋",
    "ok",
    "a",
    "",
]
HOSTILE = {
    "sk-run": "sk-" * (HOSTILE_INPUT_CHARS // 3),
    "letters": "a" * HOSTILE_INPUT_CHARS,
    "bearers": "Bearer " * (HOSTILE_INPUT_CHARS // 7),
    "bearer-spaces": "Bearer" + " " * HOSTILE_INPUT_CHARS,
    "basics": "Basic " * (HOSTILE_INPUT_CHARS // 6),
    "jwt-dashes": "eyJ-" * (HOSTILE_INPUT_CHARS // 4),
    "jwt-dots": "eyJaaaaaaaaa." * (HOSTILE_INPUT_CHARS // 13),
    "jwt-long-no-dot": "eyJ" + "a" * HOSTILE_INPUT_CHARS,
    "url-colons": "://a:" * (HOSTILE_INPUT_CHARS // 5),
    "assignments": "password=" * (HOSTILE_INPUT_CHARS // 9),
    "assignment-spaces": "api_key" + " " * HOSTILE_INPUT_CHARS,
    "short-keys": "sk-aaaaaaaaaaaa " * (HOSTILE_INPUT_CHARS // 16),
    "whitespace": " " * HOSTILE_INPUT_CHARS,
    "hints-everywhere": "key token secret :// " * (HOSTILE_INPUT_CHARS // 21),
    "fullwidth": "ｓｋ－" * (HOSTILE_INPUT_CHARS // 3),
    "zero-width": "sk-\u200b" * (HOSTILE_INPUT_CHARS // 4),
    "secret-prefixes": "correct-horse-battery-stapl" * (HOSTILE_INPUT_CHARS // 27),
}


@pytest.fixture
def registered() -> Iterator[None]:
    """Register a set of secrets of various lengths; leave an empty registry behind."""
    set_secrets(["abc", "zq7xw", "hunter2secret", "correct-horse-battery-staple", "x" * 64])
    yield
    set_secrets([])


# --- configured values --------------------------------------------------------------------------


def test_a_long_secret_goes_wherever_it_appears(registered: None) -> None:
    for text in (
        "the key is hunter2secret, ok",
        "gluedhunter2secretinside",
        "hunter2secret",
        "correct-horse-battery-staple and hunter2secret",
        "x" * 70,
    ):
        cleaned = redact_text(text)
        assert "hunter2secret" not in cleaned and "x" * 64 not in cleaned, cleaned
        assert "correct-horse-battery-staple" not in cleaned
        assert MARKER in cleaned
    assert redact_text("the key is hunter2secret, ok") == f"the key is {MARKER}, ok"


def test_a_short_secret_goes_only_as_a_whole_token(registered: None) -> None:
    assert redact_text("token zq7xw here") == f"token {MARKER} here"
    assert redact_text("(zq7xw)") == f"({MARKER})"
    assert redact_text("zq7xwzq7xw and azq7xw stay") == "zq7xwzq7xw and azq7xw stay"


def test_a_too_short_secret_is_not_searched_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    assert len("abc") < SECRET_MIN_CHARS <= len("zq7xw") < SECRET_ANYWHERE_MIN_CHARS
    with caplog.at_level(logging.WARNING, logger="kryten_llm.redact"):
        set_secrets(["abc", "long-enough-secret"])
    try:
        assert "1 configured secret(s) shorter than" in caplog.text
        assert "abc" not in caplog.text  # the warning counts them; it never names them
        assert redact_text("abc is the alphabet") == "abc is the alphabet"
    finally:
        set_secrets([])


def test_a_secret_that_contains_another_goes_whole() -> None:
    redactor = Redactor(["horse-battery", "correct-horse-battery-staple"])
    assert redactor.text("say correct-horse-battery-staple") == f"say {MARKER}"


def test_a_secret_disguised_in_full_width_or_with_invisibles_is_found(registered: None) -> None:
    for disguised in ("ｈｕｎｔｅｒ２ｓｅｃｒｅｔ", "hunter2\u200bsecret", "hun\u00adter2secret"):
        cleaned = redact_text(f"psst {disguised} psst")
        assert cleaned == f"psst {MARKER} psst", cleaned


def test_registering_again_replaces_the_previous_secrets() -> None:
    set_secrets(["first-secret-value"])
    set_secrets(["second-secret-value"])
    try:
        assert redact_text("first-secret-value") == "first-secret-value"
        assert redact_text("second-secret-value") == MARKER
    finally:
        set_secrets([])


def test_also_adds_secrets_for_one_call_only() -> None:
    assert redact_text("my own-key-12345", also=["own-key-12345"]) == f"my {MARKER}"
    assert redact_text("my own-key-12345") == "my own-key-12345"


@settings(max_examples=300, deadline=None)
@given(before=st.text(max_size=40), after=st.text(max_size=40))
def test_a_registered_secret_never_survives(before: str, after: str) -> None:
    redactor = Redactor(["hunter2secret", "sk-test-DO-NOT-LEAK-1234567890"])
    for secret in ("hunter2secret", "sk-test-DO-NOT-LEAK-1234567890"):
        assert secret not in redactor.text(before + secret + after)


# --- key shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEY_SHAPES.values(), ids=KEY_SHAPES.keys())
def test_key_shapes_go_and_the_sentence_stays(key: str) -> None:
    cleaned = redact_text(f"here is my key {key}, use it well")
    assert cleaned == f"here is my key {MARKER}, use it well"
    assert has_secret(key)


@pytest.mark.parametrize(("text", "gone", "kept"), LABELLED)
def test_labelled_credentials_keep_their_label(text: str, gone: str, kept: str) -> None:
    cleaned = redact_text(text)
    assert gone not in cleaned, cleaned
    assert kept in cleaned and MARKER in cleaned, cleaned


def test_a_full_width_key_is_found() -> None:
    assert redact_text("ｓｋ－ｐｒｏｊ－ＡｂＣｄＥｆ０１２３４５６７８９ｇｈＩＪｋｌ") == MARKER


@pytest.mark.parametrize("text", ORDINARY_CHAT)
def test_ordinary_chat_is_left_alone(registered: None, text: str) -> None:
    assert redact_text(text) == text
    assert not has_secret(text)


def test_redacting_twice_changes_nothing_more(registered: None) -> None:
    text = " ".join([*KEY_SHAPES.values(), *(t for t, _, _ in LABELLED), "hunter2secret zq7xw"])
    once = redact_text(text)
    assert redact_text(once) == once


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_redacted_in_linear_time(registered: None, text: str) -> None:
    started = time.perf_counter()
    redact_text(text)
    elapsed = time.perf_counter() - started
    assert elapsed < HOSTILE_BOUND_SECONDS, f"{elapsed:.1f} s for {len(text)} chars"


# --- values -------------------------------------------------------------------------------------


def test_values_are_redacted_deeply_and_made_json_ready(registered: None) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque hunter2secret"

    value = {
        "text": "hunter2secret",
        "nested": [("a", KEY_SHAPES["openai"]), {"hunter2secret": 1.5}],
        "numbers": [1, True, None, float("nan"), float("inf"), 2.5],
        "object": Opaque(),
        "set": {"zq7xw"},
    }
    assert redact_value(value) == {
        "text": MARKER,
        "nested": [["a", MARKER], {MARKER: 1.5}],
        "numbers": [1, True, None, None, None, 2.5],
        "object": f"opaque {MARKER}",
        "set": [MARKER],
    }
    json.dumps(redact_value(value), allow_nan=False)


# --- the configured secrets the service registers -----------------------------------------------


def test_the_service_registers_every_kind_of_configured_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_REDACT_KEY", "env-key-0123456789")
    settings = build_settings(
        {
            "nats": {
                "url": "nats://bot:url-password-1@127.0.0.1:4222",
                "password": "nats-password-1",
                "token": "nats-token-1",
            },
            "control": {"token": "control-token-1"},
            "llm_providers": {
                "inline": {"api_key": "inline-key-1", "extra_headers": {"X-Org": "org-value-1"}},
                "env": {"api_key_env": "TEST_REDACT_KEY", "priority": 2},
            },
        },
        "test",
    )
    assert set(configured_secrets(settings)) == {
        "url-password-1",
        "nats-password-1",
        "nats-token-1",
        "control-token-1",
        "inline-key-1",
        "org-value-1",
        "env-key-0123456789",
    }


# --- logs ---------------------------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_are_redacted_in_both_formats(
    fmt: str,
    registered: None,
    restore_root_logger: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("DEBUG", fmt)
    logger = logging.getLogger("kryten_llm.test")
    logger.info("provider said %s and %r", KEY_SHAPES["anthropic"], {"k": "hunter2secret"})
    logger.warning('quoted: password="hunter2hunter2" and "api_key": "abcd1234efgh"')
    try:
        raise RuntimeError(f"boom with {KEY_SHAPES['google']}")
    except RuntimeError:
        logger.exception("failed near correct-horse-battery-staple")
    logger.info("bad %d arguments", "hunter2secret")  # a logging bug must not leak either
    output = capsys.readouterr().err
    for secret in (
        KEY_SHAPES["anthropic"],
        "hunter2secret",
        "hunter2hunter2",
        "abcd1234efgh",
        KEY_SHAPES["google"],
        "correct-horse-battery-staple",
    ):
        assert secret not in output, (secret, output)
    assert "provider said" in output and "boom with" in output and "Traceback" in output
    if fmt == "json":
        lines = [json.loads(line) for line in output.splitlines()]
        assert lines[0]["message"] == f"provider said {MARKER} and {{'k': '{MARKER}'}}"
        assert "exception" in lines[2]


def test_the_log_filter_is_cheap_for_an_ordinary_line(registered: None) -> None:
    line = "mention 'mention' from Alice in 420Grindhouse: answering (cid 0c5e1d9a-4b7f)"
    started = time.perf_counter()
    for _ in range(10_000):
        redact_text(line)
    per_line = (time.perf_counter() - started) / 10_000
    assert per_line < 0.001, f"{per_line * 1e6:.0f} us per line"


# --- chat: formatter, guard, sender -------------------------------------------------------------


def test_a_secret_glued_into_an_overlong_word_is_not_split_into_chat(registered: None) -> None:
    """The formatter hard-cuts a word longer than a line: it must redact before cutting."""
    processing = MessageProcessingSettings(max_message_length=60, max_parts=10)
    formatter = ResponseFormatter(processing, PersonalitySettings())
    guard = OutputGuard(processing, SafetySettings())
    for secret, glue in [
        ("correct-horse-battery-staple", ""),
        ("x" * 64, ""),
        (KEY_SHAPES["openrouter"], "="),  # a shape needs a word boundary before it
    ]:
        word = "y" * 45 + glue + secret + "z" * 30
        parts = guard.check(formatter.format(f"Look: {word} there.")).parts
        joined = "".join(parts)
        assert parts and MARKER.strip("*") in joined, parts
        for start in range(len(secret) - 7):
            assert secret[start : start + 8] not in joined, (secret, parts)


def test_the_guard_redacts_and_says_so(registered: None) -> None:
    processing = MessageProcessingSettings()
    guard = OutputGuard(processing, SafetySettings())
    result = guard.check([f"my key is {KEY_SHAPES['openai']} and hunter2secret, enjoy"])
    assert result.parts == [f"my key is {MARKER} and {MARKER}, enjoy"]
    assert ("redacted", "secret or key-shaped text") in [
        (d.action, d.reason) for d in result.decisions
    ]


async def test_the_sender_refuses_a_part_holding_a_secret(registered: None) -> None:
    posted: list[str] = []

    async def send_chat(channel: str, domain: str, text: str) -> None:
        posted.append(text)

    processing = MessageProcessingSettings(split_delay_seconds=0)
    sender = ChatSender(send_chat, processing, dry_run=False)
    parts = ["fine", "leaks hunter2secret", f"leaks {KEY_SHAPES['github']}", "fine too"]
    sent = await sender.send(ChatLine("lounge", "cytu.be", "alice", "bot?", 0), parts)
    assert sent == posted == ["fine", "fine too"]
    assert unsafe_part("leaks hunter2secret", ["/"])


# --- provider errors and the config report ------------------------------------------------------


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeProvider]:
    server = await fp.start_fake_provider("openai_compatible")
    yield server
    await server.stop()


async def test_a_provider_echoing_credentials_gets_them_redacted(
    registered: None, openai_fake: FakeProvider
) -> None:
    echoed = [
        "sk-test-own-key-0123456789",  # its own key
        "org-header-value-42",  # its own extra header value (never registered)
        "correct-horse-battery-staple",  # another configured secret
        KEY_SHAPES["anthropic"],  # someone's key
    ]
    # The last one straddles the excerpt's cut: its first half must not survive either.
    padding = "p" * (200 - 10 - len(" ".join(echoed[:3])) - 2)
    openai_fake.always(fp.status(401, f"{' '.join(echoed[:3])} {padding} {echoed[3]}"))
    settings = openai_fake.settings(
        api_key="sk-test-own-key-0123456789", extra_headers={"X-Org": "org-header-value-42"}
    )
    provider = build_provider("p", settings)
    request = LLMRequest(system="s", messages=(ChatMessage("user", "hi"),))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProviderError) as info:
            await provider.complete(session, request, 5.0)
    detail = info.value.detail
    for secret in echoed:
        for start in range(len(secret) - 7):
            assert secret[start : start + 8] not in detail, (secret, detail)
    assert MARKER in detail


def test_the_config_report_hides_a_key_pasted_into_the_wrong_field(registered: None) -> None:
    bad = {"llm_providers": {"main": {"base_url": KEY_SHAPES["openrouter"]}}}
    with pytest.raises(ConfigError) as info:
        build_settings(bad, "test")
    report = info.value.report()
    assert KEY_SHAPES["openrouter"][:20] not in report
    assert "llm_providers.main.base_url" in report and MARKER in report
    assert redact({"api_key": "k", "url": "hunter2secret"}) == {"api_key": MARKER, "url": MARKER}


def test_the_module_keeps_one_registry() -> None:
    set_secrets(["registry-check-secret"])
    try:
        assert current().text("registry-check-secret") == MARKER
    finally:
        set_secrets([])


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[str, FakeSystemd]]:
    path = str(tmp_path / "notify.sock")
    receiver = FakeSystemd(path)
    yield path, receiver
    receiver.close()


async def test_systemd_status_is_redacted(
    registered: None, systemd_socket: tuple[str, FakeSystemd]
) -> None:
    """`systemctl status` is readable by every local user; the NATS URL may carry a password."""
    path, receiver = systemd_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.status("waiting for NATS at nats://bot:hunter2secret@10.0.0.5:4222")
    await wait_until(lambda: len(receiver.received) == 1)
    assert receiver.messages() == [f"STATUS=waiting for NATS at nats://{MARKER}@10.0.0.5:4222"]
    await notifier.close()
