"""`mock/`: a deterministic built-in provider that needs no network.

It serves the no-config start and lets users try the gateway before wiring a
real upstream. Usage is counted with the same tiktoken encodings the gateway
bills with, so a mock answer is billed exactly like a real one.
`mock_delay` is the time to first token, `mock_chunk_delay` the pause between
chunks; a request may carry its own `mock_response`, as with LiteLLM.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import trio

from trigate.providers.base import Completion

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DEFAULT_RESPONSE = "This is a mock response from trigate. It streams one word at a time."
_WORDS = re.compile(r"\s*\S+\s*|\s+")


class MockProvider:
    """Adapter for one `mock/` deployment."""

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
        await trio.sleep(self._first_token_delay)
        return Completion(
            body={
                "id": _completion_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self._model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": await self._usage(body, text),
            }
        )

    async def open_stream(self, body: dict[str, Any]) -> MockChunkStream:
        text = self._text_for(body)
        usage = await self._usage(body, text)
        return MockChunkStream(self._model, text, usage, self._first_token_delay, self._chunk_delay)

    def _text_for(self, body: dict[str, Any]) -> str:
        text = body.get("mock_response")
        return text if isinstance(text, str) else self._response

    async def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        messages = body.get("messages")
        prompt = await self._counter.count_prompt_async(
            self._model, messages if isinstance(messages, list) else [], body.get("tools")
        )
        completion = await self._counter.count_text_async(self._model, text)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


class MockChunkStream:
    """The mock answer, one word per chunk, ending with a usage chunk like OpenAI's."""

    def __init__(
        self,
        model: str,
        text: str,
        usage: dict[str, int],
        first_token_delay: float,
        chunk_delay: float,
    ) -> None:
        self._model = model
        self._text = text
        self._usage = usage
        self._first_token_delay = first_token_delay
        self._chunk_delay = chunk_delay

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        frame = {
            "id": _completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._model,
        }
        await trio.sleep(self._first_token_delay)
        chunks = [
            _chunk(frame, {"role": "assistant", "content": ""}, None),
            *(_chunk(frame, {"content": word}, None) for word in _WORDS.findall(self._text)),
            _chunk(frame, {}, "stop"),
            {**frame, "choices": [], "usage": self._usage},
        ]
        if not self._chunk_delay:
            yield chunks  # an instant answer arrives as one burst, as from a real upstream
            return
        for index, chunk in enumerate(chunks):
            if index:
                await trio.sleep(self._chunk_delay)
            yield [chunk]

    async def aclose(self) -> None:
        """Nothing to release: the mock holds no connection."""


def _chunk(frame: dict[str, Any], delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {**frame, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
