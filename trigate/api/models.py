"""`GET /v1/models`: the model groups this gateway serves (and the aliases not hidden),
in OpenAI's list format, with their token limits where known."""

from __future__ import annotations

import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from trigate.api.jsonio import json_response
from trigate.errors import GatewayError
from trigate.gateway import Gateway
from trigate.limits import allows_access_group, allows_model
from trigate.router.deployments import ModelGroups


def register(app: QuartTrio, gateway: Gateway) -> None:
    created = int(time.time())

    @app.get("/v1/models")
    @app.get("/models")
    async def list_models() -> Response:
        """LiteLLM's query flags: `only_model_access_groups` lists the model access
        groups the caller may use instead of the models; `include_model_access_groups`
        lists them after the models."""
        caller = await gateway.auth.authenticate(request.headers)
        groups = gateway.groups
        access = groups.access
        only_groups = _flag("only_model_access_groups")
        data = []
        if not only_groups:
            data = [
                _listed(name, groups, created)
                for name in groups.listed()
                if allows_model(caller, name, access.covering)
            ]
        if only_groups or _flag("include_model_access_groups"):
            data += [
                _model(name, created) for name in access.names if allows_access_group(caller, name)
            ]
        return json_response({"object": "list", "data": data})


def _flag(name: str) -> bool:
    """A boolean query argument as LiteLLM (FastAPI) reads one: true, True, 1, yes, on."""
    value = request.args.get(name)
    return value is not None and value.lower() in ("true", "1", "yes", "on")


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "trigate"}


def _listed(name: str, groups: ModelGroups, created: int) -> dict[str, Any]:
    """A model group in OpenAI's list, with the context window and output limit every one
    of its deployments can take, where they are known, and the endpoints any of them
    serves (`supported_endpoints`, as LiteLLM's price table names them)."""
    model = _model(name, created)
    try:
        deployments = groups.deployments(name)
    except GatewayError:  # an alias of a name its wildcard cannot route: listed, unknown limits
        return model
    for limit in ("max_input_tokens", "max_output_tokens"):
        known = [value for d in deployments if (value := getattr(d, limit)) is not None]
        if known and len(known) == len(deployments):
            model[limit] = min(known)
    served = {path for d in deployments for path in d.abilities.supported_endpoints()}
    model["supported_endpoints"] = sorted(served)
    return model
