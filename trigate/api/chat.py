"""`POST /v1/chat/completions`.

Only what the gateway decides on or reads is validated (`model`, `messages`,
`stream`, `stream_options`, the shapes of `tools` and `tool_choice`); every other
field goes to the upstream untouched.
"""

from __future__ import annotations

from typing import Any

from trigate.api.calls import (
    CHAT,
    check_stream_fields,
    check_tool_fields,
    proxy_request,
    require_messages,
    require_model,
)
from trigate.api.model_api import Incoming, Reply, Route
from trigate.gateway import Gateway


def routes(gateway: Gateway) -> dict[str, Route]:
    async def chat_completions(incoming: Incoming) -> Reply:
        return await proxy_request(gateway, incoming, CHAT, _validate)

    route = Route(chat_completions)
    return {"/v1/chat/completions": route, "/chat/completions": route}


def _validate(body: dict[str, Any]) -> str:
    model = require_model(body)
    require_messages(body)
    check_stream_fields(body)
    check_tool_fields(body)
    return model
