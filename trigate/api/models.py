"""`GET /v1/models`: the model groups this gateway serves, in OpenAI's list format."""

from __future__ import annotations

import time

from quart import Response, request
from quart_trio import QuartTrio

from trigate.api.jsonio import json_response
from trigate.gateway import Gateway
from trigate.limits import allows_model


def register(app: QuartTrio, gateway: Gateway) -> None:
    created = int(time.time())

    @app.get("/v1/models")
    @app.get("/models")
    async def list_models() -> Response:
        caller = await gateway.auth.authenticate(request.headers)
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": created, "owned_by": "trigate"}
                    for name in gateway.groups.names
                    if allows_model(caller, name)
                ],
            }
        )
