"""`POST /v1/embeddings`, billed by the input tokens the upstream reports (or counted).
Embeddings never stream: a body's `stream` is the upstream's to judge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trigate.api.envelopes import OPENAI
from trigate.api.surface import EMBEDDINGS, OpenAIExchange
from trigate.api.validation import require_model
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


class EmbeddingsSurface:
    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> OpenAIExchange:
        model = require_model(body)
        value = body.get("input")
        valid = (isinstance(value, str) and value) or (
            isinstance(value, list)
            and value
            and all(isinstance(i, str | int | list) for i in value)
        )
        if not valid:
            raise InvalidRequest(
                "`input` is required: a non-empty string, array of strings, or token ids.",
                param="input",
            )
        return OpenAIExchange(model, body, EMBEDDINGS, False)
