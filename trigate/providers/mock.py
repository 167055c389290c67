"""`mock/`: a deterministic built-in provider that needs no network.

It serves the no-config start and lets users try the gateway before wiring a
real upstream. Usage is counted with the same tiktoken encodings the gateway
bills with, so a mock answer is billed exactly like a real one.
`mock_delay` is the time to first token, `mock_chunk_delay` the pause between
chunks; a request may carry its own `mock_response`, as with LiteLLM.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import trio

from trigate.providers.base import Completion, Embeddings, Provider, TextCompletions
from trigate.usage import UsageMeter

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

EMBEDDING_DIMENSIONS = 16
DEFAULT_RESPONSE = "This is a mock response from trigate. It streams one word at a time."
_WORDS = re.compile(r"\s*\S+\s*|\s+")


class MockProvider(Provider, TextCompletions, Embeddings):
    """Adapter for one `mock/` deployment: chat, legacy completions and embeddings."""

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        self._model = params.upstream_model
        self._response = params.mock_response or DEFAULT_RESPONSE
        self._first_token_delay = params.mock_delay
        self._chunk_delay = params.mock_chunk_delay
        self._counter = counter

    async def complete(self, body: dict[str, Any]) -> Completion:
        text = self._text_for(body)
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return await self._answer(body, text, "chat.completion", "chatcmpl", choice)

    async def complete_text(self, body: dict[str, Any]) -> Completion:
        text = self._text_for(body)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        return await self._answer(body, text, "text_completion", "cmpl", choice)

    async def embed(self, body: dict[str, Any]) -> Completion:
        """Deterministic unit vectors, one per input, so equal texts embed equally."""
        value = body.get("input")
        inputs = value if isinstance(value, list) and not _token_ids(value) else [value]
        await trio.sleep(self._first_token_delay)
        prompt = await UsageMeter(self._counter, self._model, body).prompt_tokens()
        return Completion(
            body={
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _vector(item)}
                    for i, item in enumerate(inputs)
                ],
                "model": self._model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )

    async def open_stream(self, body: dict[str, Any]) -> MockChunkStream:
        text = self._text_for(body)
        frame = _frame("chat.completion.chunk", "chatcmpl", self._model)
        chunks = [
            _choice(frame, delta={"role": "assistant", "content": ""}),
            *(_choice(frame, delta={"content": word}) for word in _WORDS.findall(text)),
            _choice(frame, delta={}, finish_reason="stop"),
        ]
        return await self._stream(body, text, frame, chunks)

    async def open_text_stream(self, body: dict[str, Any]) -> MockChunkStream:
        text = self._text_for(body)
        frame = _frame("text_completion", "cmpl", self._model)
        words = [_choice(frame, text=word, logprobs=None) for word in _WORDS.findall(text)]
        chunks = [*words, _choice(frame, text="", logprobs=None, finish_reason="stop")]
        return await self._stream(body, text, frame, chunks)

    async def _answer(
        self, body: dict[str, Any], text: str, kind: str, prefix: str, choice: dict[str, Any]
    ) -> Completion:
        await trio.sleep(self._first_token_delay)
        answer = {**_frame(kind, prefix, self._model), "choices": [choice]}
        return Completion(body={**answer, "usage": await self._usage(body, text)})

    async def _stream(
        self,
        body: dict[str, Any],
        text: str,
        frame: dict[str, Any],
        chunks: list[dict[str, Any]],
    ) -> MockChunkStream:
        usage_chunk = {**frame, "choices": [], "usage": await self._usage(body, text)}
        return MockChunkStream([*chunks, usage_chunk], self._first_token_delay, self._chunk_delay)

    def _text_for(self, body: dict[str, Any]) -> str:
        text = body.get("mock_response")
        return text if isinstance(text, str) else self._response

    async def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        """Counted exactly as the gateway counts an upstream that reports nothing."""
        prompt = await UsageMeter(self._counter, self._model, body).prompt_tokens()
        completion = await self._counter.count_text_async(self._model, text)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


class MockChunkStream:
    """Prepared chunks, paced like a model: the first after `first_token_delay`, then one
    every `chunk_delay`; with no pacing, all in one burst, as a real upstream sends them."""

    def __init__(
        self, chunks: list[dict[str, Any]], first_token_delay: float, chunk_delay: float
    ) -> None:
        self._chunks = chunks
        self._first_token_delay = first_token_delay
        self._chunk_delay = chunk_delay

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        await trio.sleep(self._first_token_delay)
        if not self._chunk_delay:
            yield self._chunks
            return
        for index, chunk in enumerate(self._chunks):
            if index:
                await trio.sleep(self._chunk_delay)
            yield [chunk]

    async def aclose(self) -> None:
        """Nothing to release: the mock holds no connection."""


def _frame(kind: str, prefix: str, model: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def _choice(
    frame: dict[str, Any], finish_reason: str | None = None, **fields: Any
) -> dict[str, Any]:
    return {**frame, "choices": [{"index": 0, **fields, "finish_reason": finish_reason}]}


def _token_ids(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(item, int) for item in value)


def _vector(item: Any) -> list[float]:
    digest = hashlib.sha256(str(item).encode()).digest()[:EMBEDDING_DIMENSIONS]
    raw = [byte - 127.5 for byte in digest]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]
