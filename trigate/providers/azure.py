"""`azure/`: Azure OpenAI, OpenAI's chat completions and embeddings behind a deployment URL,
and its Responses API (`/openai/responses`), relayed as it came.

The body is OpenAI's; only the address (`/openai/deployments/<deployment>` with
an `api-version` query) and the `api-key` header differ, so requests and
streams go through the OpenAI adapter's handling. What Azure adds is its
content filter: a filtered prompt is a 400 with code `content_filter`, which
the error classification already reads as a content-policy failure; a filtered
answer arrives as `finish_reason: "content_filter"`, which is raised as the
same failure so that `content_policy_fallbacks` can act on it. A stream's
first chunk may carry only `prompt_filter_results` with empty `choices`; it is
relayed as it is, together with the answer's first content.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from trigate.errors import UpstreamError, from_upstream_status
from trigate.providers.base import (
    Completion,
    Embeddings,
    Provider,
    Realtime,
    RealtimeEndpoint,
    UpstreamClient,
)
from trigate.providers.openai import (
    BatchAPI,
    MediaAPI,
    OpenAIChunkStream,
    ResponsesAPI,
    fetch_completion,
    realtime_headers,
    stream_payload,
    upstream_headers,
    websocket_url,
)

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

# The latest GA data-plane inference version (it has `stream_options`).
DEFAULT_API_VERSION = "2024-10-21"
# The Responses API came with 2025-03-01-preview; an older configured version is chat's.
RESPONSES_API_VERSION = "2025-04-01-preview"
FIRST_RESPONSES_VERSION = "2025-03-01"
# The Realtime API came with 2024-10-01-preview.
REALTIME_API_VERSION = "2024-10-01-preview"
FIRST_REALTIME_VERSION = "2024-10-01"
FILTERED = "content_filter"


class AzureOpenAI(Provider, Embeddings, ResponsesAPI, MediaAPI, BatchAPI, Realtime):
    """Adapter for one Azure OpenAI deployment; the upstream model is the deployment name.
    The Responses API (`/openai/responses`) is served natively, at the configured
    `api_version` when it has the API, else at RESPONSES_API_VERSION."""

    responses_by_default = True

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        if not params.api_base:
            raise ValueError("`azure/` models need an `api_base` (the resource's endpoint)")
        self._model = params.upstream_model
        version = params.api_version or DEFAULT_API_VERSION
        deployment = (
            f"{params.api_base.rstrip('/')}/openai/deployments/{quote(self._model, safe='')}"
        )
        query = f"?api-version={quote(version, safe='')}"
        headers = upstream_headers(params, _auth(params))

        def client(path: str) -> UpstreamClient:
            return UpstreamClient(transport, f"{deployment}/{path}{query}", headers, params.timeout)

        self._upstream = client("chat/completions")
        self._embeddings_upstream = client("embeddings")
        self._connect_media(client)
        # Files and batches are the resource's, not a deployment's.
        resource = params.api_base.rstrip("/")
        self._files_upstream = UpstreamClient(
            transport, f"{resource}/openai/files{query}", headers, params.timeout
        )
        self._batches_upstream = UpstreamClient(
            transport, f"{resource}/openai/batches{query}", headers, params.timeout
        )
        realtime_version = version if version >= FIRST_REALTIME_VERSION else REALTIME_API_VERSION
        realtime_query = (
            f"?api-version={quote(realtime_version, safe='')}"
            f"&deployment={quote(self._model, safe='')}"
        )
        self._realtime = RealtimeEndpoint(
            f"{websocket_url(resource)}/openai/realtime{realtime_query}", realtime_headers(headers)
        )
        responses_version = version if version >= FIRST_RESPONSES_VERSION else RESPONSES_API_VERSION
        responses_query = f"?api-version={quote(responses_version, safe='')}"
        responses = f"{params.api_base.rstrip('/')}/openai/responses"
        self._responses_upstream = UpstreamClient(
            transport, f"{responses}{responses_query}", headers, params.timeout
        )
        self._compact_upstream = UpstreamClient(
            transport, f"{responses}/compact{responses_query}", headers, params.timeout
        )

    def realtime_endpoint(self) -> RealtimeEndpoint:
        return self._realtime

    async def complete(self, body: dict[str, Any]) -> Completion:
        completion = await fetch_completion(self._upstream, {**body, "model": self._model})
        if any(_filtered(choice) for choice in completion.body.get("choices") or ()):
            raise filtered_answer()
        return completion

    async def embed(self, body: dict[str, Any]) -> Completion:
        return await fetch_completion(self._embeddings_upstream, {**body, "model": self._model})

    async def open_stream(self, body: dict[str, Any]) -> AzureChunkStream:
        payload = stream_payload(body, self._model, stream_options=True)
        return AzureChunkStream(OpenAIChunkStream(await self._upstream.post_stream(payload)))


def _auth(params: LiteLLMParams) -> dict[str, str]:
    """An API key, else a Microsoft Entra ID token (`azure_ad_token`, as in LiteLLM)."""
    if params.api_key:
        return {"api-key": params.api_key}
    token = params.azure_ad_token
    return {"authorization": f"Bearer {token}"} if token else {}


class AzureChunkStream:
    """OpenAI chunks, cut at the first choice Azure's content filter stopped.

    Chunks before the answer's first content (the `prompt_filter_results` chunk, the
    role) are held back, so that an answer filtered before any content fails the stream
    before it has started, while the router can still fall back.
    """

    def __init__(self, inner: OpenAIChunkStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        held: list[dict[str, Any]] = []
        answered = False
        async for batch in self._inner:
            cut = next((i for i, chunk in enumerate(batch) if _chunk_filtered(chunk)), None)
            chunks = batch if cut is None else batch[:cut]
            answered = answered or any(_answers(chunk) for chunk in chunks)
            if not answered:
                if cut is not None:
                    raise filtered_answer()
                held.extend(chunks)
                continue
            if held:
                chunks, held = held + chunks, []
            if chunks:
                yield chunks
            if cut is not None:
                # Mid-answer, the client gets the error in place of the rest.
                raise filtered_answer()
        if held:
            yield held

    def waits_next(self) -> bool:
        return self._inner.waits_next()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _answers(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries any of the answer itself (OpenAIChunkStream's are dicts)."""
    return any(
        isinstance(choice, dict)
        and isinstance(delta := choice.get("delta"), dict)
        and any(delta.get(key) for key in ("content", "tool_calls", "refusal"))
        for choice in chunk.get("choices") or ()
    )


def _chunk_filtered(chunk: dict[str, Any]) -> bool:
    return any(_filtered(choice) for choice in chunk.get("choices") or ())


def _filtered(choice: Any) -> bool:
    return isinstance(choice, dict) and choice.get("finish_reason") == FILTERED


def filtered_answer() -> UpstreamError:
    return from_upstream_status(
        400,
        "The answer was filtered by Azure OpenAI's content management policy "
        "(finish_reason: content_filter).",
        {},
        FILTERED,
    )
