"""`vertex_ai/`: Google Cloud's Vertex AI, for Gemini, Claude and embedding models.

Vertex speaks its publishers' own APIs under one Google project and contract, so
this module only says where and with which credentials: Gemini models take
`generateContent` / `streamGenerateContent` (the translation is gemini.py's),
Claude models (`vertex_ai/claude-...`) take the Messages API over `rawPredict` /
`streamRawPredict` (anthropic.py's, native `/v1/messages` bodies included), with the
model in the URL and `anthropic_version: vertex-2023-10-16` in the body, as Vertex
requires. Embeddings go through `predict`, the method Vertex serves them by.

LiteLLM's settings: `vertex_project` (else the credentials' own project, else
`VERTEXAI_PROJECT` / `GOOGLE_CLOUD_PROJECT`), `vertex_location` (else
`VERTEXAI_LOCATION`, else us-central1; `global` is the global endpoint) and
`vertex_credentials` (google_credentials.py). `api_base` replaces Google's host.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from trigate.errors import UpstreamError
from trigate.providers.anthropic import AnthropicMessages
from trigate.providers.base import Completion, Provider, UpstreamClient, read_json_object
from trigate.providers.gemini import (
    GeminiEndpoint,
    GeminiProvider,
    read_error,
    reclassified,
    texts_to_embed,
)
from trigate.providers.google_credentials import CredentialsError, GoogleToken, credentials_info
from trigate.providers.openai import upstream_headers

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

logger = logging.getLogger("trigate")
DEFAULT_LOCATION = "us-central1"
# The Messages API version Vertex takes, in the body rather than a header.
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"


def vertex_ai(
    params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
) -> Provider:
    """The adapter for a `vertex_ai/` deployment: by its model's publisher."""
    if params.upstream_model.startswith("claude"):
        return VertexClaude(params, transport, counter)
    return VertexGemini(params, transport, counter)


class VertexLocation:
    """Where a deployment's models are, and the token that reaches them."""

    def __init__(self, params: LiteLLMParams) -> None:
        # A deployment that cannot be served is said at start-up and answered 502 with the
        # reason, as a Bedrock deployment without credentials is: the others still serve.
        self.problem: str | None = None
        try:
            info = credentials_info(params.vertex_credentials)
        except CredentialsError as error:
            info, self.problem = None, str(error)
        project = (
            params.vertex_project
            or (info or {}).get("project_id")
            or os.environ.get("VERTEXAI_PROJECT")
            or os.environ.get("GOOGLE_CLOUD_PROJECT")
        )
        if not isinstance(project, str) or not project:
            project = "-"
            self.problem = self.problem or (
                "vertex_project is required for vertex_ai/ deployments (or the credentials' "
                "project_id, or VERTEXAI_PROJECT / GOOGLE_CLOUD_PROJECT in the environment)"
            )
        if self.problem is not None:
            logger.warning("deployment %s cannot be served: %s", params.model, self.problem)
        location = str(
            params.vertex_location or os.environ.get("VERTEXAI_LOCATION") or DEFAULT_LOCATION
        )
        host = "aiplatform.googleapis.com"
        if location != "global":
            host = f"{location}-{host}"
        base = params.api_base or f"https://{host}"
        self.location = location
        self.project = project
        self.token = GoogleToken(info, self.problem)
        self._publishers = (
            f"{base.rstrip('/')}/v1/projects/{quote(project, safe='')}"
            f"/locations/{quote(location, safe='')}/publishers"
        )

    def model_url(self, publisher: str, model: str) -> str:
        return f"{self._publishers}/{publisher}/models/{quote(model, safe='@')}"


class VertexGemini(GeminiProvider):
    """Gemini (and embedding) models on Vertex AI: Gemini's adapter at Vertex's address."""

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        where = VertexLocation(params)
        model = params.upstream_model
        endpoint = GeminiEndpoint(
            model,
            where.model_url("google", model),
            upstream_headers(params, {}),
            params.timeout,
            authorize=where.token.headers,
            embed_method="predict",
        )
        self._connect(endpoint, transport)
        self.token = where.token

    async def embed(self, body: dict[str, Any]) -> Completion:
        """`predict` with one instance per input; its token counts are the usage.
        `task_type` (RETRIEVAL_QUERY, ...) and `dimensions` are Vertex's parameters."""
        texts = texts_to_embed(body, "Vertex AI")
        task = body.get("task_type")
        instances = [
            {"content": text, **({"task_type": task} if isinstance(task, str) else {})}
            for text in texts
        ]
        payload: dict[str, Any] = {"instances": instances}
        dimensions = body.get("dimensions")
        if isinstance(dimensions, int):
            payload["parameters"] = {"outputDimensionality": dimensions}
        try:
            _, answer = await read_json_object(await self._embed.post(payload))
        except UpstreamError as error:
            raise reclassified(error) from None
        data = []
        tokens = 0
        for index, prediction in enumerate(answer.get("predictions") or ()):
            embeddings = (prediction or {}).get("embeddings") or {}
            statistics = embeddings.get("statistics") or {}
            count = statistics.get("token_count")
            tokens += int(count) if isinstance(count, int | float) else 0
            data.append(
                {"object": "embedding", "index": index, "embedding": embeddings.get("values", [])}
            )
        return Completion(
            body={
                "object": "list",
                "data": data,
                "model": self._model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


class VertexClaude(AnthropicMessages):
    """Claude on Vertex AI: Anthropic's adapter, its Messages body sent to `rawPredict`."""

    # Vertex takes the Messages API version in the body; the client's betas still go.
    _client_header_names = ("anthropic-beta",)

    def __init__(
        self, params: LiteLLMParams, transport: httpx.AsyncBaseTransport, counter: TokenCounter
    ) -> None:
        where = VertexLocation(params)
        headers = upstream_headers(params, {})
        url = where.model_url("anthropic", params.upstream_model)

        def client(method: str) -> UpstreamClient:
            return UpstreamClient(
                transport,
                f"{url}:{method}",
                headers,
                params.timeout,
                read_error=read_error,
                authorize=where.token.headers,
            )

        self._connect(params, headers, client("rawPredict"), client("streamRawPredict"))
        self._anthropic_version = params.anthropic_version or VERTEX_ANTHROPIC_VERSION
        self.token = where.token

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        """The model is in the URL: Vertex refuses one in the body."""
        payload = {key: value for key, value in body.items() if key != "model"}
        payload["anthropic_version"] = self._anthropic_version
        return payload
