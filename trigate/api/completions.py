"""`POST /v1/completions`: the legacy text-completions API, streaming included."""

from __future__ import annotations

from typing import Any

from trigate.api.calls import TEXT_COMPLETIONS, check_stream_fields, proxy_request, require_model
from trigate.api.model_api import Incoming, Reply, Route
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


def routes(gateway: Gateway) -> dict[str, Route]:
    async def completions(incoming: Incoming) -> Reply:
        return await proxy_request(gateway, incoming, TEXT_COMPLETIONS, _validate)

    route = Route(completions)
    return {"/v1/completions": route, "/completions": route}


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
