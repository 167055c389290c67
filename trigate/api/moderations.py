"""`POST /v1/moderations`: OpenAI's moderation API, for `openai/` and `azure/` deployments.

The body goes as it came and the result comes back as it came; it is metered by the
tokens of its `input` (counted: the upstream reports none), at the table's price,
which is 0 for OpenAI's moderation models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from trigate.api.envelopes import OPENAI
from trigate.api.surface import MODERATIONS, OpenAIExchange
from trigate.auth import Caller
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.providers import Completion
from trigate.usage import Usage

# OpenAI's own default, for a request that names no model.
DEFAULT_MODEL = "omni-moderation-latest"


class ModerationExchange(OpenAIExchange):
    """A moderation: its result goes back as the upstream sent it, with no usage added."""

    __slots__ = ()

    def answer(self, completion: Completion, usage: Usage) -> bytes:
        return completion.raw or orjson.dumps(completion.body)


class ModerationsSurface:
    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> ModerationExchange:
        model = body.setdefault("model", DEFAULT_MODEL)
        if not isinstance(model, str) or not model:
            raise InvalidRequest("`model` must be a non-empty string.", param="model")
        value = body.get("input")
        if not (isinstance(value, str | list) and value):
            raise InvalidRequest(
                "`input` is required: a string, an array of strings, or of text and image inputs.",
                param="input",
            )
        return ModerationExchange(model, body, MODERATIONS, False)
