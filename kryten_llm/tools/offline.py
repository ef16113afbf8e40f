"""The offline stand-in LLM: a Markov chain (markovify) behind the OpenAI wire format.

When no API key or Ollama URL is configured, `kryten-llm demo` and `kryten-llm replay` still
need something that writes text. This is a real local text generator, not a canned reply: a
Markov model built from a small bundled corpus plus the chat it is shown in each prompt,
served on loopback as `/v1/chat/completions`, so the bot reaches it through exactly the same
provider code it uses for a real model.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from importlib import resources
from typing import Any

import markovify
from aiohttp import web

from kryten_llm.tools.simulate import free_port

MODEL_NAME = "offline-markov"
_DATA_BLOCK = re.compile(r"<<<(?:[\w.\- ]{1,40}: )?(.*?)>>>", re.S)
SENTENCE_TRIES = 60
MAX_SENTENCE_CHARS = 160


def bundled_corpus() -> str:
    return resources.files("kryten_llm").joinpath("data/offline_corpus.txt").read_text("utf-8")


class MarkovWriter:
    """Writes one or two sentences in the corpus's voice, leaning on the chat it is shown."""

    def __init__(self, corpus: str | None = None, seed: int | None = None) -> None:
        self._base = markovify.NewlineText(corpus or bundled_corpus(), state_size=1)
        self._rng = random.Random(seed)

    def write(self, prompt_texts: list[str]) -> str:
        chat = "\n".join(t for t in prompt_texts if len(t.split()) >= 3)
        model = self._base
        if chat:
            chat_model = markovify.NewlineText(chat, state_size=1)
            model = markovify.combine([self._base, chat_model], [1.0, 1.5])
        # markovify draws from the global `random`; seed it for reproducible replays.
        random.seed(self._rng.random())
        sentences = []
        for _ in range(self._rng.choice((1, 2))):
            sentence = model.make_short_sentence(
                MAX_SENTENCE_CHARS, tries=SENTENCE_TRIES, test_output=False
            )
            if sentence:
                sentences.append(sentence)
        return " ".join(sentences) or self._base.make_sentence(test_output=False) or "Hm."


def prompt_texts(body: dict[str, Any]) -> list[str]:
    """The quoted chat and user message inside an OpenAI-style request body."""
    texts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and message.get("role") == "user":
            texts += [m.strip() for m in _DATA_BLOCK.findall(content)]
    return texts


async def write_event_stream(
    request: web.Request, model: str, text: str, usage: dict[str, Any] | None = None
) -> web.StreamResponse:
    """`text` as an OpenAI-style SSE answer: a chunk per word, usage, then `[DONE]`."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    chunks: list[dict[str, Any]] = [
        {
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": word}}],
        }
        for word in re.findall(r"\S+\s*", text)
    ]
    if usage:
        chunks.append(
            {"object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}
        )
    for chunk in chunks:
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


class OfflineLLMServer:
    """An aiohttp server on 127.0.0.1 answering `/v1/chat/completions` with Markov text."""

    def __init__(self, seed: int | None = None) -> None:
        self.writer = MarkovWriter(seed=seed)
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        texts = prompt_texts(body)
        text = await asyncio.to_thread(self.writer.write, texts)
        prompt_chars = sum(len(t) for t in texts)
        usage = {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4}
        if body.get("stream"):
            return await write_event_stream(request, MODEL_NAME, text, usage)
        message = {"role": "assistant", "content": text}
        return web.json_response(
            {
                "id": "offline",
                "object": "chat.completion",
                "model": MODEL_NAME,
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": usage,
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_NAME}]})

    async def start(self) -> OfflineLLMServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
