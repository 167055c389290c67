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
from dataclasses import dataclass, replace
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from quart import Response, request
from quart_trio import QuartTrio

from trigate.api.admin import admin_body, query_arg, require_master
from trigate.api.jsonio import JSON
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.config import WILDCARD, ConfigError, ModelEntry
from trigate.errors import InvalidRequest, NotFound, echoed
from trigate.gateway import Gateway
from trigate.limits import allows_model
from trigate.redaction import is_secret_field, without_secrets
from trigate.roles import reads_all
from trigate.router.deployments import Deployment, ModelGroups, deployment_id
from trigate.sealing import SECRET_PARAMS
from trigate.spend.prices import ModelPrice, PriceTable

# Besides SECRET_PARAMS and any field named as a credential (trigate/redaction.py):
# `extra_headers`, whose values may carry one.
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
            if (wanted is None or entry_id == wanted) and _visible(
                gateway, caller, entry.model_name
            ):
                in_store = entry_id in stored
                data.append(_deployment_info(entry, deployment, in_store, reads_all(caller.role)))
        return _scrubbed({"data": data})

    @app.get("/model_group/info")
    async def model_group_info() -> Response:
        caller = await gateway.auth.authenticate(request.headers)
        wanted = query_arg("model_group")
        groups = gateway.groups
        if wanted is not None:
            if not _visible(gateway, caller, wanted):
                raise NotFound(
                    f"No model group `{echoed(wanted)}` is served.", code="model_not_found"
                )
            listed = {wanted: _group_members(gateway, wanted)}
        else:
            listed = {name: _group_members(gateway, name) for name in groups.names}
            for pattern in groups.wildcard_names():
                listed.update(_expanded(gateway, pattern, listed))
        data = [
            _group_info(name, members)
            for name, members in listed.items()
            if _visible(gateway, caller, name)
        ]
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


def _visible(gateway: Gateway, caller: Caller, model_name: str) -> bool:
    return reads_all(caller.role) or allows_model(
        caller, model_name, gateway.groups.access.covering
    )


def _checked_entry(
    gateway: Gateway, model_name: str, params: dict[str, Any], info: dict[str, Any]
) -> ModelEntry:
    """The deployment as the config file would hold it, validated as the file's are."""
    groups = info.get("access_groups")
    if groups is not None and not (
        isinstance(groups, list) and all(isinstance(name, str) and name for name in groups)
    ):
        raise InvalidRequest(
            "`model_info.access_groups` must be a list of access group names.",
            param="model_info.access_groups",
        )
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
        if not is_secret_field(name, _HIDDEN_PARAMS) and (master or name not in _LOCATION_PARAMS)
    }


def _unit_prices(price: ModelPrice | None) -> dict[str, float]:
    """The prices by the unit (image, pixel, character, second) the deployment has, under
    the price table's names."""
    if price is None:
        return {}
    given = {
        "input_cost_per_image": price.per_image,
        "input_cost_per_pixel": price.per_pixel,
        "output_cost_per_image": price.per_output_image,
        "input_cost_per_character": price.per_character,
        "input_cost_per_second": price.per_second,
        "output_cost_per_second": price.per_output_second,
    }
    return {name: value for name, value in given.items() if value is not None}


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
        **_unit_prices(price),
        "supported_endpoints": deployment.abilities.supported_endpoints() if deployment else [],
        "rpm": params.rpm,
        "tpm": params.tpm,
        **entry.model_info,
    }
    return {
        "model_name": entry.model_name,
        "litellm_params": _public_params(entry, master=master),
        "model_info": info,
    }


@dataclass(frozen=True, slots=True)
class _Member:
    """One deployment of a model group, as `/model_group/info` sums them up."""

    entry: ModelEntry
    price: ModelPrice | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    @classmethod
    def of(cls, deployment: Deployment) -> _Member:
        return cls(
            deployment.entry,
            deployment.price,
            deployment.max_input_tokens,
            deployment.max_output_tokens,
        )

    @classmethod
    def priced(cls, entry: ModelEntry, upstream_model: str, prices: PriceTable) -> _Member:
        """A wildcard's entry serving `upstream_model`, priced as its deployment would be
        (the entry's own prices over the table's), without `price_for`'s warning: listing
        a model is not serving it."""
        params = entry.litellm_params
        price = prices.lookup(params.provider, upstream_model)
        if price is not None:
            price = replace(
                price,
                input=_given(params.input_cost_per_token, price.input),
                output=_given(params.output_cost_per_token, price.output),
            )

        def limit(name: str) -> int | None:
            given = entry.model_info.get(name)
            if isinstance(given, int):
                return given
            return getattr(price, name) if price is not None else None

        return cls(entry, price, limit("max_input_tokens"), limit("max_output_tokens"))


def _given(configured: float | None, table: float | None) -> float | None:
    return table if configured is None else configured


def _group_members(gateway: Gateway, name: str) -> list[_Member]:
    """A group's deployments; a wildcard's entries (nothing is made for a pattern)."""
    groups = gateway.groups
    if name in groups.wildcard_names():
        return [_Member(entry) for entry in _pattern_entries(gateway, name)]
    return [_Member.of(deployment) for deployment in groups.deployments(name)]


def _pattern_entries(gateway: Gateway, pattern: str) -> list[ModelEntry]:
    return [
        entry
        for entry, made in gateway.groups.configured()
        if made is None and entry.model_name == pattern
    ]


def _expanded(
    gateway: Gateway, pattern: str, listed: dict[str, list[_Member]]
) -> dict[str, list[_Member]]:
    """The models a wildcard deployment stands for, as LiteLLM lists them: each model
    the price table knows its provider to serve that the pattern routes here (not a
    group of its own, nor a more specific wildcard's), by the name a client sends for
    it. A pattern the table knows nothing under is listed as itself."""
    groups = gateway.groups
    prices = gateway.models.prices
    matcher = _wildcard_regex(pattern)
    expanded: dict[str, list[_Member]] = {}
    for entry in _pattern_entries(gateway, pattern):
        params = entry.litellm_params
        upstream = _wildcard_regex(params.upstream_model)
        for known in prices.models_of(params.provider):
            found = upstream.fullmatch(known)
            if found is None:
                continue
            name = _filled(pattern, found.groups())
            if name in listed or not matcher.fullmatch(name) or _routed(groups, name) != pattern:
                continue
            expanded.setdefault(name, []).append(_Member.priced(entry, known, prices))
    if not expanded:
        return {pattern: _group_members(gateway, pattern)}
    return expanded


def _routed(groups: ModelGroups, name: str) -> str | None:
    """The wildcard `name` is routed to: the first, most specific, that matches it."""
    return next(
        (
            pattern
            for pattern in groups.wildcard_names()
            if _wildcard_regex(pattern).fullmatch(name)
        ),
        None,
    )


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    """A wildcard name as a regex, each `*` a group that matches anything."""
    return re.compile("(.*)".join(re.escape(part) for part in pattern.split(WILDCARD)), re.S)


def _filled(pattern: str, matched: tuple[str | Any, ...]) -> str:
    """`pattern` with its `*`s replaced, in order, by `matched` (the last fills any left)."""
    parts = pattern.split(WILDCARD)
    filled = [parts[0]]
    for index, part in enumerate(parts[1:]):
        filled += [str(matched[min(index, len(matched) - 1)]) if matched else "", part]
    return "".join(filled)


def _group_info(name: str, members: list[_Member]) -> dict[str, Any]:
    """LiteLLM's `ModelGroupInfo`: the group's largest limits and prices, its summed
    rate limits, and what any of its deployments supports."""
    entries = [member.entry for member in members]
    prices = [member.price for member in members if member.price is not None]

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
        "max_input_tokens": largest([member.max_input_tokens for member in members]),
        "max_output_tokens": largest([member.max_output_tokens for member in members]),
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
    """Every answer here is scrubbed of credentials field by field: a credential that
    slipped into a field of its own (say, `model_info.api_key`) never leaves. Only the
    secret's own field is touched: a model name that happens to contain a placeholder
    key (`fake`, `none`, `EMPTY`) comes out as it is."""
    return Response(
        orjson.dumps(without_secrets(payload, _HIDDEN_PARAMS)), status=200, content_type=JSON
    )
