"""`POST /v1/chat/completions`.

Only what the gateway decides on is validated (`model`, `messages`, `stream`,
`stream_options`); every other field goes to the upstream untouched.
"""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trigate.api.calls import CHAT, check_stream_fields, proxy_request, require_model
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions() -> Response:
        return await proxy_request(gateway, CHAT, _validate)


def _validate(body: dict[str, Any]) -> str:
    model = require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(
            "`messages` is required and must be a non-empty array.", param="messages"
        )
    if not all(isinstance(message, dict) for message in messages):
        raise InvalidRequest("Every entry of `messages` must be an object.", param="messages")
    check_stream_fields(body)
    return model
