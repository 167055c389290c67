"""Model management, as LiteLLM's proxy has it: what is served (`/model/info`,
`/model_group/info`), deployments added, changed and deleted without a restart
(`/model/new`, `/model/update`, `/model/delete`), and `POST /config/reload`.

Reads need a key and show a virtual key only the models it may use, without
where they are (`api_base`); writes need the master key. Nothing here ever
shows a deployment's credentials. Deployments added here live in the store and
reach every worker within `POLL_INTERVAL` (this one at once); those of the
config file change only with the file.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from quart import Response, request
from quart_trio import QuartTrio

from trigate.api.admin import admin_body, query_arg, require_master
from trigate.api.jsonio import JSON
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.config import ConfigError, ModelEntry
from trigate.errors import InvalidRequest, NotFound, echoed, secrets
from trigate.gateway import Gateway
from trigate.limits import allows_model
from trigate.roles import reads_all
from trigate.router.deployments import Deployment, deployment_id
from trigate.sealing import SECRET_PARAMS

# Besides SECRET_PARAMS: any other parameter whose name says it holds a credential,
# and `extra_headers`, whose values may carry one.
_SECRET_NAME = re.compile(r"key|secret|password|credential|_token$")
_HIDDEN_PARAMS = SECRET_PARAMS | {"extra_headers"}
# What a virtual key is not told: where the gateway's upstreams are.
_LOCATION_PARAMS = frozenset({"api_base", "aws_bedrock_runtime_endpoint"})


class NewModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_name: str = Field(min_length=1)
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = Field(default_factory=dict)


class ModelUpdate(BaseModel):
    """LiteLLM's `updateDeployment`: `model_info.id` (or the path) names the deployment;
    the fields given replace the stored ones, the rest stay."""

    model_config = ConfigDict(extra="ignore")

    model_name: str | None = Field(default=None, min_length=1)
    litellm_params: dict[str, Any] | None = None
    model_info: dict[str, Any] | None = None


class ModelDelete(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/model/info")
    @app.get("/v1/model/info")
    async def model_info() -> Response:
        caller = await gateway.auth.authenticate(request.headers)
        wanted = query_arg("litellm_model_id")
        stored = gateway.models.stored
        data = []
        for entry, deployment in gateway.groups.configured():
            entry_id = deployment_id(entry)
            if (wanted is None or entry_id == wanted) and _visible(caller, entry.model_name):
                in_store = entry_id in stored
                data.append(_deployment_info(entry, deployment, in_store, reads_all(caller.role)))
        return _scrubbed({"data": data})

    @app.get("/model_group/info")
    async def model_group_info() -> Response:
        caller = await gateway.auth.authenticate(request.headers)
        wanted = query_arg("model_group")
        groups = gateway.groups
        if wanted is not None:
            if not _visible(caller, wanted):
                raise NotFound(
                    f"No model group `{echoed(wanted)}` is served.", code="model_not_found"
                )
            names = [wanted]
        else:
            names = [*groups.names, *groups.wildcard_names()]
        data = []
        for name in names:
            if not _visible(caller, name):
                continue
            members = _group_members(gateway, name)
            data.append(_group_info(name, members))
        return _scrubbed({"data": data})

    @app.post("/model/new")
    async def model_new() -> Response:
        body = await admin_body(gateway, NewModel)
        model_id = str(body.model_info.get("id") or uuid.uuid4())
        if any(deployment_id(entry) == model_id for entry, _ in gateway.groups.configured()):
            raise InvalidRequest(f"A deployment with id `{model_id}` exists already.", param="id")
        info = {**body.model_info, "id": model_id}
        entry = _checked_entry(gateway, body.model_name, body.litellm_params, info)
        now = wall_time()
        row = {
            "model_id": model_id,
            "model_name": body.model_name,
            "litellm_params": gateway.models.sealer.seal_params(body.litellm_params),
            "model_info": info,
            "created_at": now,
            "updated_at": now,
        }
        await gateway.store.insert_model(row)
        await gateway.models.refresh()
        return _scrubbed(_written(model_id, entry))

    @app.post("/model/update")
    async def model_update() -> Response:
        body = await admin_body(gateway, ModelUpdate)
        model_id = body.model_info.get("id") if body.model_info else None
        if not isinstance(model_id, str) or not model_id:
            raise InvalidRequest("`model_info.id` names the deployment to update.", param="id")
        return await _updated(gateway, model_id, body)

    @app.patch("/model/<model_id>/update")
    async def model_patch(model_id: str) -> Response:
        """LiteLLM's newer form of `/model/update`: the id in the path."""
        return await _updated(gateway, model_id, await admin_body(gateway, ModelUpdate))

    @app.post("/model/delete")
    async def model_delete() -> Response:
        body = await admin_body(gateway, ModelDelete)
        _stored_row(gateway, body.id)
        if not await gateway.store.delete_model(body.id):
            raise _no_such_model(body.id)
        await gateway.models.refresh()
        return _scrubbed({"message": f"Model: {body.id} deleted successfully"})

    @app.post("/config/reload")
    async def config_reload() -> Response:
        await require_master(gateway)
        try:
            await gateway.models.reload()
        except ConfigError as error:
            raise InvalidRequest(str(error), code="invalid_config") from None
        return _scrubbed({"status": "reloaded", "deployments": len(gateway.models.entries())})


async def _updated(gateway: Gateway, model_id: str, body: ModelUpdate) -> Response:
    row = _stored_row(gateway, model_id)
    sealer = gateway.models.sealer
    params = {**sealer.unseal_params(row["litellm_params"]), **(body.litellm_params or {})}
    info = {**row["model_info"], **(body.model_info or {}), "id": model_id}
    model_name = body.model_name or row["model_name"]
    entry = _checked_entry(gateway, model_name, params, info)
    updated = {
        **row,
        "model_name": model_name,
        "litellm_params": sealer.seal_params(params),
        "model_info": info,
        "updated_at": wall_time(),
    }
    if not await gateway.store.update_model(updated):
        raise _no_such_model(model_id)
    await gateway.models.refresh()
    return _scrubbed(_written(model_id, entry))


def _visible(caller: Caller, model_name: str) -> bool:
    return reads_all(caller.role) or allows_model(caller, model_name)


def _checked_entry(
    gateway: Gateway, model_name: str, params: dict[str, Any], info: dict[str, Any]
) -> ModelEntry:
    """The deployment as the config file would hold it, validated as the file's are."""
    raw = {"model_name": model_name, "litellm_params": params, "model_info": info}
    try:
        return gateway.models.parse(raw)
    except ConfigError as error:
        raise InvalidRequest(str(error).removeprefix("config: "), param="litellm_params") from None


def _stored_row(gateway: Gateway, model_id: str) -> dict[str, Any]:
    stored = gateway.models.stored.get(model_id)
    if stored is not None:
        return dict(stored.row)
    if any(deployment_id(entry) == model_id for entry, _ in gateway.groups.configured()):
        raise InvalidRequest(
            f"Deployment `{model_id}` is defined in the config file: change the file and "
            "reload it (SIGHUP or POST /config/reload).",
            param="id",
            code="config_file_model",
        )
    raise _no_such_model(model_id)


def _no_such_model(model_id: str) -> NotFound:
    return NotFound(f"No deployment with id `{echoed(model_id)}` exists.", code="model_not_found")


def _written(model_id: str, entry: ModelEntry) -> dict[str, Any]:
    """A deployment `/model/new` or `/model/update` wrote, as LiteLLM answers it."""
    return {
        "model_id": model_id,
        "model_name": entry.model_name,
        "litellm_params": _public_params(entry, master=True),
        "model_info": {**entry.model_info, "id": model_id, "db_model": True},
    }


def _public_params(entry: ModelEntry, *, master: bool) -> dict[str, Any]:
    """The deployment's `litellm_params` as given, without a credential; a virtual key
    is not told where the upstream is either."""
    given = entry.litellm_params.model_dump(mode="json", exclude_unset=True)
    return {
        name: value
        for name, value in given.items()
        if name not in _HIDDEN_PARAMS
        and not _SECRET_NAME.search(name)
        and (master or name not in _LOCATION_PARAMS)
    }


def _deployment_info(
    entry: ModelEntry, deployment: Deployment | None, stored: bool, master: bool
) -> dict[str, Any]:
    """One `/model/info` row: LiteLLM's `model_info` (prices and limits from the price
    table, where the deployment does not set its own), then the deployment's own."""
    params = entry.litellm_params
    price = deployment.price if deployment is not None else None
    info: dict[str, Any] = {
        "id": deployment_id(entry),
        "db_model": stored,
        "key": params.upstream_model,
        "litellm_provider": params.provider,
        "mode": "chat",
        "max_tokens": deployment.max_output_tokens if deployment else None,
        "max_input_tokens": deployment.max_input_tokens if deployment else None,
        "max_output_tokens": deployment.max_output_tokens if deployment else None,
        "input_cost_per_token": price.input if price else None,
        "output_cost_per_token": price.output if price else None,
        "cache_read_input_token_cost": price.cache_read if price else None,
        "cache_creation_input_token_cost": price.cache_write if price else None,
        "rpm": params.rpm,
        "tpm": params.tpm,
        **entry.model_info,
    }
    return {
        "model_name": entry.model_name,
        "litellm_params": _public_params(entry, master=master),
        "model_info": info,
    }


def _group_members(gateway: Gateway, name: str) -> list[ModelEntry | Deployment]:
    """A group's deployments; a wildcard's entries (nothing is made for a pattern)."""
    groups = gateway.groups
    if name in groups.wildcard_names():
        return [entry for entry, d in groups.configured() if d is None and entry.model_name == name]
    return list(groups.deployments(name))


def _group_info(name: str, members: list[ModelEntry | Deployment]) -> dict[str, Any]:
    """LiteLLM's `ModelGroupInfo`: the group's largest limits and prices, its summed
    rate limits, and what any of its deployments supports."""
    deployments = [m for m in members if isinstance(m, Deployment)]
    entries = [m.entry if isinstance(m, Deployment) else m for m in members]
    prices = [d.price for d in deployments if d.price is not None]

    def largest(values: list[Any]) -> Any:
        known = [value for value in values if value is not None]
        return max(known) if known else None

    def total(values: list[int | None]) -> int | None:
        known = [value for value in values if value is not None]
        return sum(known) if known else None

    def supports(feature: str) -> bool:
        return any(entry.model_info.get(feature) is True for entry in entries)

    return {
        "model_group": name,
        "providers": sorted({entry.litellm_params.provider for entry in entries}),
        "max_input_tokens": largest([d.max_input_tokens for d in deployments]),
        "max_output_tokens": largest([d.max_output_tokens for d in deployments]),
        "input_cost_per_token": largest([p.input for p in prices]),
        "output_cost_per_token": largest([p.output for p in prices]),
        "mode": "chat",
        "tpm": total([entry.litellm_params.tpm for entry in entries]),
        "rpm": total([entry.litellm_params.rpm for entry in entries]),
        "supports_parallel_function_calling": supports("supports_parallel_function_calling"),
        "supports_vision": supports("supports_vision"),
        "supports_function_calling": supports("supports_function_calling"),
        "is_public_model_group": False,
    }


def _scrubbed(payload: Any) -> Response:
    """Every answer here passes the process's secret scrubber too: a credential that
    slipped into a field of its own (say, `model_info`) still never leaves."""
    text = secrets.redact(orjson.dumps(payload).decode())
    return Response(text, status=200, content_type=JSON)
