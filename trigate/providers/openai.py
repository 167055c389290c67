"""`openai/`: any OpenAI-compatible upstream.

The request body is relayed as the client sent it, unknown fields included,
with two changes: `model` becomes the upstream's model name and streams always
ask for usage, so that billing never has to guess.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import orjson

from trigate.errors import UpstreamError
from trigate.providers.base import Completion, UpstreamClient, translate_transport_error
from trigate.sse import ServerSentEvent, SSEDecoder

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DEFAULT_API_BASE = "https://api.openai.com/v1"
DONE = "[DONE]"


class OpenAICompatible:
    """Adapter for one OpenAI-compatible deployment."""

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        base = (params.api_base or DEFAULT_API_BASE).rstrip("/")
        self._model = params.upstream_model
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if params.api_key:
            headers["authorization"] = f"Bearer {params.api_key}"
        extra = getattr(params, "extra_headers", None)
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        self._upstream = UpstreamClient(
            transport, f"{base}/chat/completions", headers, params.timeout
        )

    async def complete(self, body: dict[str, Any]) -> Completion:
        response = await self._upstream.post({**body, "model": self._model})
        try:
            raw = await response.aread()
        except httpx.HTTPError as error:
            raise translate_transport_error(error) from error
        finally:
            await response.aclose()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream answered with a body that is not JSON.") from None
        if not isinstance(data, dict):
            raise UpstreamError("The upstream answered with JSON that is not an object.")
        return Completion(body=data, raw=raw)

    async def open_stream(self, body: dict[str, Any]) -> OpenAIChunkStream:
        options = body.get("stream_options")
        options = (
            {**options, "include_usage": True}
            if isinstance(options, dict)
            else {"include_usage": True}
        )
        payload = {**body, "model": self._model, "stream": True, "stream_options": options}
        return OpenAIChunkStream(await self._upstream.post(payload))


class OpenAIChunkStream:
    """An upstream SSE response, decoded into batches of OpenAI chunk dicts."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        decoder = SSEDecoder()
        try:
            async for raw in self._response.aiter_raw():
                read = _parse_events(decoder.feed(raw))
                if read.chunks:
                    yield read.chunks
                if read.failure is not None:
                    raise read.failure
                if read.done:
                    return
        except httpx.HTTPError as error:
            raise translate_transport_error(error) from error
        read = _parse_events(decoder.flush())
        if read.chunks:
            yield read.chunks
        if read.failure is not None:
            raise read.failure

    async def aclose(self) -> None:
        await self._response.aclose()


class _Read(NamedTuple):
    """What one upstream read held: its chunks, then perhaps `[DONE]` or a failure."""

    chunks: list[dict[str, Any]]
    done: bool = False
    failure: UpstreamError | None = None


def _parse_events(events: list[ServerSentEvent]) -> _Read:
    chunks: list[dict[str, Any]] = []
    for event in events:
        if event.data == DONE:
            return _Read(chunks, done=True)
        try:
            chunks.append(_parse_chunk(event.data))
        except UpstreamError as failure:
            # The chunks before the failure still reach the client, and are billed.
            return _Read(chunks, failure=failure)
    return _Read(chunks)


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream sent a stream event that is not JSON.") from None
    if not isinstance(chunk, dict):
        raise UpstreamError("The upstream sent a stream event that is not a JSON object.")
    error = chunk.get("error")
    if error is not None and "choices" not in chunk:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise UpstreamError(f"The upstream failed mid-stream: {message}")
    return chunk
