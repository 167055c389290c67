"""`POST /v1/embeddings`, billed by the input tokens the upstream reports (or counted)."""

from __future__ import annotations

from typing import Any

from trigate.api.calls import EMBEDDINGS, proxy_request, require_model
from trigate.api.model_api import Incoming, Reply, Route
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


def routes(gateway: Gateway) -> dict[str, Route]:
    async def embeddings(incoming: Incoming) -> Reply:
        return await proxy_request(gateway, incoming, EMBEDDINGS, _validate)

    route = Route(embeddings)
    return {"/v1/embeddings": route, "/embeddings": route}


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
