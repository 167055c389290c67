"""`POST /v1/completions`: the legacy text-completions API, streaming included."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from trigate.api.calls import TEXT_COMPLETIONS, check_stream_fields, proxy_request, require_model
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions() -> Response:
        return await proxy_request(gateway, TEXT_COMPLETIONS, _validate)


def _validate(body: dict[str, Any]) -> str:
    model = require_model(body)
    if not _is_prompt(body.get("prompt")):
        raise InvalidRequest(
            "`prompt` is required: a string, an array of strings, or token ids.", param="prompt"
        )
    check_stream_fields(body)
    return model


def _is_prompt(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, str | int) or (isinstance(item, list) and item) for item in value)
    )
