"""`POST /v1/audio/speech`: text to speech, the audio streamed back as it is produced.

The upstream's audio is relayed read by read through the streaming relay (so a
client that leaves closes the upstream at once, and a slow one holds it back),
with the upstream's own content-type. It is priced per character of `input` where
the table says so (tts-1), else by tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from trigate.api.envelopes import OPENAI
from trigate.api.surface import SPEECH, OpenAIExchange
from trigate.api.validation import require_model
from trigate.auth import Caller
from trigate.errors import GatewayError, InvalidRequest
from trigate.gateway import Gateway
from trigate.providers import ChunkStream, Completion, NativeEvent
from trigate.providers.base import translate_transport_error
from trigate.relay import FrameEncoder
from trigate.router.deployments import Deployment
from trigate.transport import waits_next_of
from trigate.usage import Usage

AUDIO = "audio/mpeg"


class AudioStream:
    """An upstream's audio body, read as it arrives: each read one `NativeEvent` whose frame
    is the bytes as they came."""

    # `ChunkStream.waits_next`, the transport's own.
    waits_next: Callable[[], bool]

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.waits_next = waits_next_of(response)

    async def __aiter__(self) -> AsyncIterator[list[Any]]:
        body = self._response.stream
        assert isinstance(body, httpx.AsyncByteStream)
        try:
            async for raw in body:
                if raw:
                    yield [NativeEvent("audio", {}, raw)]
        except httpx.HTTPError as error:
            raise translate_transport_error(error) from error

    async def aclose(self) -> None:
        await self._response.aclose()


class AudioFrames(FrameEncoder):
    """Audio goes out as it came; nothing can be said inside it, so an upstream's failure
    mid-stream ends it (and is recorded), and there is no end-of-stream event."""

    def error(self, error: GatewayError) -> bytes:
        return b""

    def end(self) -> bytes:
        return b""


class SpeechExchange(OpenAIExchange):
    """A speech request: always streamed, with the upstream's content-type."""

    __slots__ = ("stream_headers",)

    def __init__(self, requested: str, body: dict[str, Any]) -> None:
        super().__init__(requested, body, SPEECH, True)
        self.stream_headers: Mapping[str, str] = {"content-type": AUDIO}

    async def open_stream(self, deployment: Deployment) -> tuple[ChunkStream, bool]:
        response = await SPEECH.served_by(deployment).open_speech(self.body)
        self.stream_headers = {"content-type": response.headers.get("content-type", AUDIO)}
        return AudioStream(response), True

    def frames(self, native: bool) -> FrameEncoder:
        return AudioFrames()

    def bill(self, deployment: Deployment, completion: Completion | None, usage: Usage) -> Usage:
        price = deployment.price
        if price is None or price.per_character is None:
            return usage
        characters = len(self.body.get("input") or "")
        return Usage(
            usage.prompt_tokens, 0, usage.source, unit_cost=characters * price.per_character
        )


class SpeechSurface:
    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> SpeechExchange:
        model = require_model(body)
        text = body.get("input")
        if not isinstance(text, str) or not text:
            raise InvalidRequest("`input` is required: the text to speak.", param="input")
        body.pop("stream", None)  # speech always streams; OpenAI's API has no such field
        return SpeechExchange(model, body)
