"""`kryten-llm demo` runs the real pipeline end to end with the offline stand-in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kryten_llm.tools.demo import choose_model
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
