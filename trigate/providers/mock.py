"""`mock/`: a deterministic built-in provider that needs no network.

It serves the no-config start and lets users try the gateway before wiring a
real upstream: chat, completions and embeddings, and OpenAI's media endpoints
(images of one pixel, moderations that flag nothing, speech as WAV silence a
tenth of a second a character, transcriptions that read the whole upload and
answer `mock_response`). Usage is counted with the same tiktoken encodings the gateway
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

from trigate.audio import wav_seconds, wav_silence
from trigate.forms import StreamedFile
from trigate.providers.base import (
    Completion,
    Embeddings,
    ImageEdits,
    Images,
    Moderations,
    Provider,
    Speech,
    TextCompletions,
    Transcriptions,
)
from trigate.usage import UsageMeter

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

EMBEDDING_DIMENSIONS = 16
# A 1x1 transparent PNG: every mock image.
PIXEL_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
SPEECH_SECONDS_PER_CHARACTER = 0.1
DEFAULT_RESPONSE = "This is a mock response from trigate. It streams one word at a time."
_WORDS = re.compile(r"\s*\S+\s*|\s+")


class MockProvider(
    Provider,
    TextCompletions,
    Embeddings,
    Images,
    ImageEdits,
    Moderations,
    Speech,
    Transcriptions,
):
    """Adapter for one `mock/` deployment: chat, legacy completions, embeddings and the
    media endpoints."""

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

    async def generate_images(self, body: dict[str, Any]) -> Completion:
        """`n` one-pixel images, as `b64_json` or as a data URL, as the request asks."""
        await trio.sleep(self._first_token_delay)
        count = body.get("n")
        count = count if isinstance(count, int) and 0 < count <= 10 else 1
        if body.get("response_format") == "b64_json":
            item = {"b64_json": PIXEL_PNG}
        else:
            item = {"url": f"data:image/png;base64,{PIXEL_PNG}"}
        return Completion(body={"created": int(time.time()), "data": [dict(item)] * count})

    async def edit_images(self, form: dict[str, Any]) -> Completion:
        return await self.generate_images(form)

    async def moderate(self, body: dict[str, Any]) -> Completion:
        """Nothing flagged, one result per input."""
        value = body.get("input")
        count = len(value) if isinstance(value, list) and value else 1
        result = {
            "flagged": False,
            "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
        }
        return Completion(
            body={
                "id": f"modr-{uuid.uuid4().hex}",
                "model": self._model,
                "results": [result] * count,
            }
        )

    async def open_speech(self, body: dict[str, Any]) -> httpx.Response:
        """WAV silence, a tenth of a second for each character, in paced parts."""
        text = body.get("input")
        seconds = len(text) * SPEECH_SECONDS_PER_CHARACTER if isinstance(text, str) else 0.0
        audio = wav_silence(seconds)
        parts = [audio[start : start + 8192] for start in range(0, len(audio), 8192)]
        stream = _PacedBytes(parts, self._first_token_delay, self._chunk_delay)
        return httpx.Response(200, headers={"content-type": "audio/wav"}, stream=stream)

    async def transcribe(self, form: dict[str, Any], task: str) -> Completion:
        """Reads the whole upload, as an upstream would, and answers `mock_response`, with
        the duration the file's WAV header says (0 for other files)."""
        upload = next(value for value in form.values() if isinstance(value, StreamedFile))
        async for _ in upload.chunks():
            pass
        async for _ in upload.trailing():
            pass
        await trio.sleep(self._first_token_delay)
        text = self._text_for(form)
        if form.get("response_format") in ("text", "srt", "vtt"):
            return Completion(body={}, raw=text.encode(), media_type="text/plain; charset=utf-8")
        seconds = wav_seconds(upload.head, upload.size)
        return Completion(body={"text": text, "usage": {"type": "duration", "seconds": seconds}})

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

    def waits_next(self) -> bool:
        """Paced chunks come one at a time, as a model's do."""
        return bool(self._chunk_delay)

    async def aclose(self) -> None:
        """Nothing to release: the mock holds no connection."""


class _PacedBytes(httpx.AsyncByteStream):
    """A mock response body: its parts paced as `MockChunkStream` paces chunks."""

    def __init__(self, parts: list[bytes], first_delay: float, delay: float) -> None:
        self._parts = parts
        self._first_delay = first_delay
        self._delay = delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await trio.sleep(self._first_delay)
        for index, part in enumerate(self._parts):
            if index and self._delay:
                await trio.sleep(self._delay)
            yield part


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
