"""`POST /v1/completions`: the legacy text-completions API, streaming included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trigate.api.envelopes import OPENAI
from trigate.api.surface import TEXT_COMPLETIONS, OpenAIExchange
from trigate.api.validation import check_stream_fields, require_model
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


class CompletionsSurface:
    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> OpenAIExchange:
        model = require_model(body)
        if not _is_prompt(body.get("prompt")):
            raise InvalidRequest(
                "`prompt` is required: a string, an array of strings, or token ids.",
                param="prompt",
            )
        check_stream_fields(body)
        stream = bool(body.get("stream"))
        return OpenAIExchange(model, body, TEXT_COMPLETIONS, stream)


def _is_prompt(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, str | int) or (isinstance(item, list) and item) for item in value)
    )
