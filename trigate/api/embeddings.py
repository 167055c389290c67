"""`POST /v1/embeddings`, billed by the input tokens the upstream reports (or counted)."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trigate.api.calls import EMBEDDINGS, proxy_request, require_model
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def embeddings() -> Response:
        return await proxy_request(gateway, EMBEDDINGS, _validate)


def _validate(body: dict[str, Any]) -> str:
    model = require_model(body)
    value = body.get("input")
    valid = (isinstance(value, str) and value) or (
        isinstance(value, list) and value and all(isinstance(i, str | int | list) for i in value)
    )
    if not valid:
        raise InvalidRequest(
            "`input` is required: a non-empty string, array of strings, or token ids.",
            param="input",
        )
    return model
