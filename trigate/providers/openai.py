"""`openai/`: any OpenAI-compatible upstream.

The request body is relayed as the client sent it, unknown fields included,
with two changes: `model` becomes the upstream's model name and streams ask
for usage (where the upstream accepts `stream_options`), so that billing never
has to guess. What sets one compatible upstream apart from another, its
default base URL and quirks, is a `Dialect`; Azure reuses the request and
stream handling through `fetch_completion`, `stream_payload` and
`OpenAIChunkStream`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from trigate.errors import UpstreamError
from trigate.providers.base import (
    Completion,
    Embeddings,
    Provider,
    SSEChunkStream,
    StreamRead,
    TextCompletions,
    UpstreamClient,
    read_json_object,
)
from trigate.sse import ServerSentEvent

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DEFAULT_API_BASE = "https://api.openai.com/v1"
DONE = "[DONE]"


@dataclass(frozen=True, slots=True)
class Dialect:
    """What sets one OpenAI-compatible upstream apart from another."""

    # None: there is no public endpoint, so every deployment must name its `api_base`.
    api_base: str | None = DEFAULT_API_BASE
    # Some upstreams reject `stream_options`; without it the gateway counts what they omit.
    stream_options: bool = True
    # Prefixed to bare model names (Fireworks names models `accounts/<owner>/models/<name>`).
    model_namespace: str = ""

    def model_name(self, name: str) -> str:
        if self.model_namespace and "/" not in name:
            return f"{self.model_namespace}{name}"
        return name


OPENAI = Dialect()


class OpenAICompatible(Provider, TextCompletions, Embeddings):
    """Adapter for one OpenAI-compatible deployment."""

    def __init__(
        self,
        params: LiteLLMParams,
        transport: httpx.AsyncBaseTransport,
        counter: TokenCounter,
        dialect: Dialect = OPENAI,
    ) -> None:
        base = params.api_base or dialect.api_base
        if not base:
            raise ValueError(f"`{params.provider}/` models need an `api_base`")
        self._model = dialect.model_name(params.upstream_model)
        self._stream_options = dialect.stream_options
        auth = {"authorization": f"Bearer {params.api_key}"} if params.api_key else {}
        headers = upstream_headers(params, auth)
        base = base.rstrip("/")

        def client(path: str) -> UpstreamClient:
            return UpstreamClient(transport, f"{base}/{path}", headers, params.timeout)

        self._upstream = client("chat/completions")
        self._text_upstream = client("completions")
        self._embeddings_upstream = client("embeddings")

    async def complete(self, body: dict[str, Any]) -> Completion:
        return await fetch_completion(self._upstream, {**body, "model": self._model})

    async def open_stream(self, body: dict[str, Any]) -> OpenAIChunkStream:
        payload = stream_payload(body, self._model, stream_options=self._stream_options)
        return OpenAIChunkStream(await self._upstream.post_stream(payload))

    async def complete_text(self, body: dict[str, Any]) -> Completion:
        """Legacy `/completions`; the body is relayed as it came, like chat's."""
        return await fetch_completion(self._text_upstream, {**body, "model": self._model})

    async def open_text_stream(self, body: dict[str, Any]) -> OpenAIChunkStream:
        payload = stream_payload(body, self._model, stream_options=self._stream_options)
        return OpenAIChunkStream(await self._text_upstream.post_stream(payload))

    async def embed(self, body: dict[str, Any]) -> Completion:
        return await fetch_completion(self._embeddings_upstream, {**body, "model": self._model})


def upstream_headers(params: LiteLLMParams, auth: dict[str, str]) -> dict[str, str]:
    """JSON in, no compression, the upstream's credentials, then the deployment's own
    `extra_headers`, which may override any of them."""
    headers = {"content-type": "application/json", "accept-encoding": "identity", **auth}
    return headers | (params.extra_headers or {})


async def fetch_completion(upstream: UpstreamClient, payload: dict[str, Any]) -> Completion:
    """POST a request and keep the upstream's bytes for relaying."""
    raw, data = await read_json_object(await upstream.post(payload))
    return Completion(body=data, raw=raw)


def stream_payload(body: dict[str, Any], model: str, *, stream_options: bool) -> dict[str, Any]:
    """The streamed request: usage asked for where the upstream takes `stream_options`,
    and the client's own `stream_options` dropped where it would be rejected."""
    payload = {**body, "model": model, "stream": True}
    if not stream_options:
        payload.pop("stream_options", None)
        return payload
    options = body.get("stream_options")
    payload["stream_options"] = (
        {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    )
    return payload


class OpenAIChunkStream(SSEChunkStream):
    """An upstream SSE response, decoded into batches of OpenAI chunk dicts."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response, _parse_events)


def _parse_events(events: list[ServerSentEvent]) -> StreamRead:
    chunks: list[dict[str, Any]] = []
    for event in events:
        if event.data == DONE:
            return StreamRead(chunks, done=True)
        try:
            chunks.append(_parse_chunk(event.data))
        except UpstreamError as failure:
            # The chunks before the failure still reach the client, and are billed.
            return StreamRead(chunks, failure=failure)
    return StreamRead(chunks)


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
