"""`kryten-llm demo` runs the real pipeline end to end with the offline stand-in."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kryten_llm.config import load_settings
from kryten_llm.tools.demo import choose_model, demo_providers, demo_settings, run_demo
from kryten_llm.tools.offline import MarkovWriter, prompt_texts

ROOT = Path(__file__).resolve().parents[1]
MODEL_ENV = (
    "OPENAI_API_KEY",
    "OPENROUTER_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "OLLAMA_HOST",
    "OLLAMA_URL",
)


@pytest.mark.slow
def test_demo_answers_with_the_offline_stand_in_and_says_so() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in MODEL_ENV and not k.startswith("KRYTEN_LLM_")
    }
    result = subprocess.run(
        [sys.executable, "-m", "kryten_llm", "demo", "--lines", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "offline stand-in" in out and "markovify" in out
    assert "<Bob> CynthiaRothbot, what do you think" in out
    remembered = re.search(r"<CynthiaRothbot> Alice: remembered as ([0-9a-f]{8})\.", out)
    assert remembered is not None, out
    recalled = f"<CynthiaRothbot> Carol: {remembered.group(1)} “Alice brought the extra-butter"
    assert recalled in out, out
    bot_lines = [line for line in out.splitlines() if line.strip().startswith("<CynthiaRothbot>")]
    assert len(bot_lines) >= 2, out
    assert all(len(line.split("> ", 1)[1]) > 0 for line in bot_lines)
    assert "Traceback" not in result.stderr


def test_choose_model_prefers_a_real_model_when_named() -> None:
    assert choose_model({}).offline
    openai = choose_model({"OPENAI_API_KEY": "sk-x"})
    assert not openai.offline and openai.provider["api_key_env"] == "OPENAI_API_KEY"
    assert "sk-x" not in str(openai.provider)
    ollama = choose_model({"OLLAMA_HOST": "gpu-box:11434"})
    assert ollama.provider["type"] == "ollama"
    assert ollama.provider["base_url"] == "http://gpu-box:11434"


def test_markov_writer_uses_the_chat_and_is_reproducible() -> None:
    chat = ["the purple giraffe juggles flaming swords at midnight"] * 5
    first = MarkovWriter(seed=3).write(chat)
    assert first == MarkovWriter(seed=3).write(chat)
    outputs = " ".join(MarkovWriter(seed=s).write(chat) for s in range(30))
    assert "giraffe" in outputs  # the chat itself feeds the chain
    assert prompt_texts(
        {"messages": [{"role": "user", "content": "<<<Bob: hello there you>>> x"}]}
    ) == ["hello there you"]


def test_nats_server_is_found_from_an_unactivated_venv() -> None:
    """`.venv/bin/python -m pytest` (no venv `bin` on PATH) still finds the packaged binary."""
    code = "from kryten_llm.tools.simulate import nats_server_binary as n; print(n() or '')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = Path(result.stdout.strip())
    assert found.name == "nats-server"
    assert found.is_file() and os.access(found, os.X_OK)


# --- the demo with the operator's own config, and nothing left behind ----------------------


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in MODEL_ENV and not k.startswith("KRYTEN_LLM_") and k != "OPENROUTER_API_KEY"
    }


def nats_servers_on(port: int) -> list[int]:
    """Pids of live nats-server processes listening on `port` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            state != "Z"
            and args
            and args[0].endswith(b"nats-server")
            and str(port).encode() in args
        ):
            found.append(int(entry.name))
    return found


def demo_port(out: str) -> int:
    match = re.search(r"nats-server on nats://127\.0\.0\.1:(\d+)", out)
    assert match, out
    return int(match.group(1))


def example_copy(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    shutil.copy(ROOT / "config.example.json", path)
    return path


@pytest.mark.slow
def test_the_demo_runs_a_copy_of_the_example_config_and_leaves_nothing(tmp_path: Path) -> None:
    """It crashed on `cheaper_provider 'local'` and left its nats-server running."""
    config = example_copy(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "kryten_llm", "--config", str(config), "demo", "--lines", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=clean_env(),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "openrouter: the stand-in (its key variable OPENROUTER_API_KEY is not set)" in out
    assert "local: the stand-in (no API key)" in out
    assert [line for line in out.splitlines() if line.strip().startswith("<CynthiaRothbot>")]
    assert "Traceback" not in result.stderr
    assert nats_servers_on(demo_port(out)) == []
    assert not (tmp_path / "logs").exists()  # its response log was its own, and is gone


def test_demo_providers_keep_every_name_and_keyed_providers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test-demo-0123456789abcdef")
    settings = load_settings(ROOT / "config.example.json")
    stand_in = {"type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "x"}
    providers, notes = demo_providers(settings, stand_in, keep_keyed=True)
    assert set(providers) == {"openrouter", "local"}
    assert providers["openrouter"] is settings.llm_providers["openrouter"]
    assert providers["local"].base_url == "http://127.0.0.1:9/v1"
    assert providers["local"].priority == 50
    assert notes[0] == "openrouter: openrouter openai/gpt-4o-mini (key set (OPENROUTER_API_KEY))"
    built = demo_settings(settings, "nats://127.0.0.1:1", providers, Path("x"))
    assert built.usage.cheaper_provider == "local"
    assert built.llm_providers["openrouter"].fallback == ["local"]
    assert built.triggers[1].provider == "local"


def test_the_demo_bus_is_not_taken_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRYTEN_LLM_NATS_URL", "nats://production:4222")
    settings = load_settings(None)
    built = demo_settings(settings, "nats://127.0.0.1:1", dict(settings.llm_providers), Path("x"))
    assert built.nats.url == "nats://127.0.0.1:1"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_and_leaves_no_process(
    tmp_path: Path, signum: signal.Signals
) -> None:
    config = example_copy(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "kryten_llm", "--config", str(config), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if "<Bob>" in line:  # the bus, the stand-in and the service are all running
                break
        port = demo_port("".join(seen))
        assert nats_servers_on(port)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 128 + signum, err
    assert f"stopped by {signum.name}" in out
    assert "Traceback" not in err
    assert nats_servers_on(port) == []


async def test_a_failing_start_still_stops_the_bus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service that cannot start (here: told to fail) must not strand the bus it was given."""
    from kryten_llm.daemon.service import LLMService

    async def refuse(self: LLMService) -> bool:
        raise RuntimeError("cannot start")

    monkeypatch.setattr(LLMService, "start", refuse)
    out = io.StringIO()
    assert await run_demo(load_settings(None), "WARNING", lines=1, out=out) == 1
    assert "[demo] failed: RuntimeError: cannot start" in out.getvalue()
    assert nats_servers_on(demo_port(out.getvalue())) == []
