"""`POST /v1/chat/completions`: OpenAI's chat completions, the pipeline's own shapes.

Only what the gateway decides on or reads is validated (`model`, `messages`,
`stream`, `stream_options`, the shapes of `tools` and `tool_choice`); every other
field goes to the upstream untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trigate.api.envelopes import OPENAI
from trigate.api.surface import CHAT, OpenAIExchange
from trigate.api.validation import (
    check_stream_fields,
    check_tool_fields,
    require_messages,
    require_model,
)
from trigate.auth import Caller
from trigate.gateway import Gateway


class ChatSurface:
    envelope = OPENAI

    async def decode(
        self, gateway: Gateway, caller: Caller, body: dict[str, Any], headers: Mapping[str, str]
    ) -> OpenAIExchange:
        model = require_model(body)
        require_messages(body)
        check_stream_fields(body)
        check_tool_fields(body)
        return OpenAIExchange(model, body, CHAT, bool(body.get("stream")))
