"""`POST /v1/rerank` (and `/rerank`, `/v2/rerank`): LiteLLM's rerank API, Cohere's shape.

A request names its `model` group, a `query` and the `documents` to order (texts, or
objects whose `rank_fields` say what to read); the answer is the upstream's ranking in
Cohere's shape (rerank.py). Billed per search where the upstream bills so (Cohere's
search units, at the table's `input_cost_per_query`), else by the tokens it reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trigate.api.envelopes import OPENAI
from trigate.api.surface import RERANK, OpenAIExchange
from trigate.api.validation import require_model
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


class RerankSurface:
    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> OpenAIExchange:
        model = require_model(body)
        if not isinstance(body.get("query"), str) or not body["query"]:
            raise InvalidRequest("`query` is required: a non-empty string.", param="query")
        documents = body.get("documents")
        if (
            not isinstance(documents, list)
            or not documents
            or not all(isinstance(document, str | dict) for document in documents)
        ):
            raise InvalidRequest(
                "`documents` is required: a non-empty array of strings or objects.",
                param="documents",
            )
        top_n = body.get("top_n")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            raise InvalidRequest("`top_n` must be a positive integer.", param="top_n")
        return OpenAIExchange(model, body, RERANK, False)
