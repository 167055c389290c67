"""`/key/*`: LiteLLM's virtual-key management, for the master key; a virtual key may
read its own `/key/info`.

A key is shown once, when it is generated or regenerated; the store holds
only its SHA-256, which doubles as its `token` (and `token_id`) for later calls.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import (
    Duration,
    Limits,
    admin_body,
    authenticated,
    created_fields,
    limit_fields,
    not_found,
    permit,
    query_arg,
    require_master,
    shaped,
    token_hash_of,
)
from trigate.api.jsonio import json_response
from trigate.auth import generate_key, hash_key, key_name
from trigate.clock import wall_time
from trigate.durations import parse_duration
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway

KEY_FORMAT = re.compile(r"^sk-[A-Za-z0-9_\-]{32,}$")


class KeySettings(Limits):
    key_alias: str | None = None
    duration: Duration = None
    user_id: str | None = None
    team_id: str | None = None
    organization_id: str | None = None

    @field_validator("organization_id")
    @classmethod
    def _organization_through_team(cls, value: str | None) -> str | None:
        # Ignored, it would leave the key outside its organization's models and budget.
        if value is not None:
            raise ValueError(
                "a key joins an organization through its team: give it a `team_id` of a "
                "team in the organization"
            )
        return value


class GenerateKey(KeySettings):
    key: str | None = Field(default=None, repr=False)

    @field_validator("key")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is not None and not KEY_FORMAT.match(value):
            raise ValueError("a key must be `sk-` followed by at least 32 URL-safe characters")
        return value


class NamedKey(KeySettings):
    key: str = Field(repr=False)


class DeleteKeys(Limits):
    keys: list[str] = Field(default_factory=list, repr=False)
    key_aliases: list[str] = Field(default_factory=list)


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/key/generate")
    async def generate() -> Response:
        body = await admin_body(gateway, GenerateKey)
        key = body.key or generate_key()
        row = {**created_fields(body), **_key_fields(body), **key_identity(key)}
        await _check_team(gateway, row)
        await _insert_unique(gateway, row)
        return json_response(_generated(key, await _row(gateway, row["token_hash"])))

    @app.post("/key/update")
    async def update() -> Response:
        body = await admin_body(gateway, NamedKey)
        token = token_hash_of(body.key)
        fields = {**limit_fields(body), **_key_fields(body)}
        await _check_team(gateway, fields)
        if not await gateway.store.update("keys", token, {**fields, "updated_at": wall_time()}):
            raise not_found("key", key_name(body.key))
        # LiteLLM's answer, the key's fields at the top level; `key` is its token, never
        # the key itself (LiteLLM echoes what it was sent).
        return json_response({**key_shape(await _row(gateway, token)), "key": token})

    @app.post("/key/delete")
    async def delete() -> Response:
        body = await admin_body(gateway, DeleteKeys)
        tokens = [token_hash_of(k) for k in body.keys]
        for alias in body.key_aliases:
            tokens += [
                row["token_hash"]
                for row in await gateway.store.select("keys", {"key_alias": alias})
            ]
        if not tokens:
            raise InvalidRequest(
                "Name the keys to delete in `keys` or `key_aliases`.", param="keys"
            )
        await gateway.store.delete("keys", "token_hash", tokens)
        return json_response({"deleted_keys": tokens})

    @app.get("/key/info")
    async def info() -> Response:
        caller = await authenticated(gateway)
        key = query_arg("key")
        # Without `?key=`, a virtual key reads itself, as in LiteLLM.
        token = token_hash_of(key) if key is not None else caller.key_hash
        if token is None:
            raise InvalidRequest("Pass the key (or its token) as `?key=`.", param="key")
        permit(caller, token == caller.key_hash, "/key/info")
        info = key_shape(await _row(gateway, token))
        del info["token"]  # LiteLLM leaves the hash out of /key/info
        return json_response({"key": token, "info": info})

    @app.get("/key/list")
    async def list_keys() -> Response:
        await require_master(gateway)
        where = {c: v for c in ("team_id", "user_id", "key_alias") if (v := query_arg(c))}
        rows = await gateway.store.select("keys", where, limit=10_000)
        full = query_arg("return_full_object") in ("true", "1")
        keys: list[Any] = [key_shape(r) for r in rows] if full else [r["token_hash"] for r in rows]
        return json_response({"keys": keys, "total_count": len(keys)})

    @app.post("/key/regenerate")
    async def regenerate() -> Response:
        body = await admin_body(gateway, NamedKey)
        token = token_hash_of(body.key)
        row = await gateway.store.get("keys", token)
        if row is None:
            raise not_found("key", key_name(body.key))
        key = generate_key()
        fresh = {
            **row,
            **limit_fields(body),
            **_key_fields(body),
            **key_identity(key),
            "updated_at": wall_time(),
        }
        if not await gateway.store.replace_key(token, fresh):
            raise not_found("key", key_name(body.key))
        return json_response(_generated(key, fresh))

    for path, blocked in (("/key/block", True), ("/key/unblock", False)):
        app.add_url_rule(path, f"key_block_{blocked}", _blocker(gateway, blocked), methods=["POST"])


def _blocker(gateway: Gateway, blocked: bool) -> Any:
    async def set_blocked() -> Response:
        body = await admin_body(gateway, NamedKey)
        token = token_hash_of(body.key)
        if not await gateway.store.update(
            "keys", token, {"blocked": blocked, "updated_at": wall_time()}
        ):
            raise not_found("key", key_name(body.key))
        return json_response(key_shape(await _row(gateway, token)))

    return set_blocked


def key_identity(key: str) -> dict[str, str]:
    """What the store keeps to recognise a key: its hash and a harmless display name."""
    return {"token_hash": hash_key(key), "key_name": key_name(key)}


def _key_fields(body: KeySettings) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: getattr(body, name)
        for name in ("key_alias", "user_id", "team_id")
        if name in body.model_fields_set
    }
    if "duration" in body.model_fields_set:
        fields["expires"] = wall_time() + parse_duration(body.duration) if body.duration else None
    return fields


async def _check_team(gateway: Gateway, fields: dict[str, Any]) -> None:
    """A key's team must exist. Its user need not, as in LiteLLM, whose `/key/generate`
    creates no user: a user made later with that `user_id` binds the key from then on."""
    if fields.get("team_id") and await gateway.store.get("teams", fields["team_id"]) is None:
        raise not_found("team", fields["team_id"])


async def _insert_unique(gateway: Gateway, row: dict[str, Any]) -> None:
    alias = row.get("key_alias")
    if alias is not None and await gateway.store.select("keys", {"key_alias": alias}):
        raise InvalidRequest(f"A key with alias `{row['key_alias']}` exists.", param="key_alias")
    if await gateway.store.get("keys", row["token_hash"]) is not None:
        raise InvalidRequest("That key exists already.", param="key")
    await gateway.store.insert("keys", row)


async def _row(gateway: Gateway, token: str) -> dict[str, Any]:
    row = await gateway.store.get("keys", token)
    if row is None:
        raise not_found("key", token[:12])
    return row


def key_shape(row: dict[str, Any]) -> dict[str, Any]:
    """A key as LiteLLM shows it: its hash as `token`, never the key itself."""
    shown = shaped(row)
    shown["token"] = shown.pop("token_hash")
    return shown


def _generated(key: str, row: dict[str, Any]) -> dict[str, Any]:
    """The one response that shows the key itself; `token_id` is LiteLLM's name for the
    hash that later calls may name the key by."""
    return {**key_shape(row), "key": key, "token_id": row["token_hash"]}
