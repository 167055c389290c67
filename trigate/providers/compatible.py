"""The OpenAI-compatible families: LiteLLM's provider prefixes whose upstreams speak
OpenAI's chat completions, each with its own default base URL and quirks.

Adding a family is one line in `DIALECTS`. `stream_options` is off where the
upstream rejects it (Mistral and Perplexity refuse unknown fields; LiteLLM
sends it to neither, nor to Fireworks or Cerebras); those upstreams report
usage in their last chunk anyway, and where they do not, the gateway counts.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import httpx

from trigate.providers.base import ProviderFactory, UpstreamClient
from trigate.providers.openai import Dialect, OpenAICompatible, upstream_headers
from trigate.providers.rerank import COMPATIBLE as COHERE_SHAPED
from trigate.providers.rerank import VOYAGE, RerankClient, RerankDialect

if TYPE_CHECKING:
    from trigate.config import LiteLLMParams
    from trigate.tokens import TokenCounter

DIALECTS: dict[str, Dialect] = {
    "groq": Dialect("https://api.groq.com/openai/v1"),
    "mistral": Dialect("https://api.mistral.ai/v1", stream_options=False),
    "deepseek": Dialect("https://api.deepseek.com/v1"),
    "together_ai": Dialect("https://api.together.xyz/v1"),
    "fireworks_ai": Dialect(
        "https://api.fireworks.ai/inference/v1",
        stream_options=False,
        model_namespace="accounts/fireworks/models/",
    ),
    "openrouter": Dialect("https://openrouter.ai/api/v1"),
    "perplexity": Dialect("https://api.perplexity.ai", stream_options=False),
    "xai": Dialect("https://api.x.ai/v1"),
    "cerebras": Dialect("https://api.cerebras.ai/v1", stream_options=False),
    "deepinfra": Dialect("https://api.deepinfra.com/v1/openai"),
    "ollama": Dialect("http://localhost:11434/v1"),
    # Self-hosted servers have no default address: the deployment names it.
    "hosted_vllm": Dialect(None),
    "lm_studio": Dialect(None),
    # Embeddings and rerank only; their embeddings speak OpenAI's API.
    "jina_ai": Dialect("https://api.jina.ai/v1"),
    "voyage": Dialect("https://api.voyageai.com/v1"),
}
# Families whose upstream reranks too (at `{api_base}/rerank`), and in which shape.
RERANKS: dict[str, RerankDialect] = {
    "hosted_vllm": COHERE_SHAPED,
    "jina_ai": COHERE_SHAPED,
    "voyage": VOYAGE,
}


class RerankingCompatible(OpenAICompatible, RerankClient):
    """An OpenAI-compatible upstream that serves `/rerank` beside OpenAI's API."""

    def __init__(
        self,
        params: LiteLLMParams,
        transport: httpx.AsyncBaseTransport,
        counter: TokenCounter,
        dialect: Dialect,
        rerank: RerankDialect,
    ) -> None:
        OpenAICompatible.__init__(self, params, transport, counter, dialect)
        base = str(params.api_base or dialect.api_base).rstrip("/")
        auth = {"authorization": f"Bearer {params.api_key}"} if params.api_key else {}
        upstream = UpstreamClient(
            transport, f"{base}/{rerank.path}", upstream_headers(params, auth), params.timeout
        )
        RerankClient.__init__(self, upstream, self._model, rerank)


COMPATIBLE: dict[str, ProviderFactory] = {
    prefix: (
        partial(RerankingCompatible, dialect=dialect, rerank=RERANKS[prefix])
        if prefix in RERANKS
        else partial(OpenAICompatible, dialect=dialect)
    )
    for prefix, dialect in DIALECTS.items()
}
