"""`POST /v1/chat/completions`.

Only what the gateway decides on is validated (`model`, `messages`, `stream`,
`stream_options`); every other field goes to the upstream untouched.
"""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trigate.api.calls import (
    CHAT,
    check_stream_fields,
    proxy_request,
    require_messages,
    require_model,
)
from trigate.gateway import Gateway


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions() -> Response:
        return await proxy_request(gateway, CHAT, _validate)


def _validate(body: dict[str, Any]) -> str:
    model = require_model(body)
    require_messages(body)
    check_stream_fields(body)
    return model
