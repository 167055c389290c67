"""`/key/*`: LiteLLM's virtual-key management. An admin manages every key; as in
LiteLLM's self-service, an `internal_user` makes, changes and deletes its own keys
within its user's limits, and a team's admin the team's keys within the team's; a key
reads its own keys (trigate/roles.py says which role may call which route).

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
    NotPermitted,
    admin_body,
    admin_call,
    authorized,
    created_fields,
    is_team_admin,
    limit_fields,
    not_found,
    not_reserved,
    query_arg,
    shaped,
    token_hash_of,
)
from trigate.api.guardrails import set_guardrails
from trigate.api.jsonio import json_response
from trigate.auth import Caller, generate_key, hash_key, key_name
from trigate.clock import wall_time
from trigate.durations import parse_duration
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.limits import Covering, allowed_by
from trigate.mcp_gateway.permissions import ObjectPermission
from trigate.roles import MASTER_USER_ID, reads_all, writes_all
from trigate.store import Row

KEY_FORMAT = re.compile(r"^sk-[A-Za-z0-9_\-]{32,}$")
# The most keys `/key/list` answers with.
MAX_LISTED = 10_000


class KeySettings(Limits):
    key_alias: str | None = None
    # LiteLLM's: the guardrails the key's requests run (kept in its metadata).
    guardrails: list[str] | None = None
    duration: Duration = None
    user_id: str | None = None
    team_id: str | None = None
    organization_id: str | None = None
    # LiteLLM's MCP permissions (trigate.mcp_gateway.permissions).
    object_permission: ObjectPermission | None = None

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
        caller, body = await admin_call(gateway, GenerateKey)
        key = body.key or generate_key()
        fields = _key_fields(body)
        if not writes_all(caller.role) and "user_id" not in fields:
            fields["user_id"] = caller.user_id  # a user's own key, as LiteLLM makes it
        not_reserved(fields.get("user_id"))
        await _may_manage(gateway, caller, fields, body)
        row = {**created_fields(body), **fields, **key_identity(key)}
        set_guardrails(gateway, body.guardrails, row, None)
        await _check_team(gateway, row)
        await _insert_unique(gateway, row)
        return json_response(_generated(key, await _row(gateway, row["token_hash"])))

    @app.post("/key/update")
    async def update() -> Response:
        body, token, fields = await _change(gateway)
        await _check_team(gateway, fields)
        if body.guardrails is not None:
            set_guardrails(gateway, body.guardrails, fields, await gateway.store.get("keys", token))
        if not await gateway.store.update("keys", token, {**fields, "updated_at": wall_time()}):
            raise not_found("key", key_name(body.key))
        # LiteLLM's answer, the key's fields at the top level; `key` is its token, never
        # the key itself (LiteLLM echoes what it was sent).
        return json_response({**key_shape(await _row(gateway, token)), "key": token})

    @app.post("/key/delete")
    async def delete() -> Response:
        caller, body = await admin_call(gateway, DeleteKeys)
        tokens = [token_hash_of(k) for k in body.keys]
        for alias in body.key_aliases:
            named = await gateway.store.select("keys", {"key_alias": alias})
            if not named and not writes_all(caller.role):
                # Refused as another's alias is: a refusal tells nothing of others' keys.
                raise NotPermitted(_NOT_YOURS)
            tokens += [row["token_hash"] for row in named]
        if not tokens:
            raise InvalidRequest(
                "Name the keys to delete in `keys` or `key_aliases`.", param="keys"
            )
        for token in tokens:
            await _may_delete(gateway, caller, token)
        await gateway.store.delete("keys", "token_hash", tokens)
        return json_response({"deleted_keys": tokens})

    @app.get("/key/info")
    async def info() -> Response:
        caller = await authorized(gateway)
        key = query_arg("key")
        # Without `?key=`, a virtual key reads itself, as in LiteLLM.
        token = token_hash_of(key) if key is not None else caller.key_hash
        if token is None:
            raise InvalidRequest("Pass the key (or its token) as `?key=`.", param="key")
        if token != caller.key_hash and not reads_all(caller.role):
            # Its user's keys, and its teams' where it is their admin; a key that does not
            # exist is refused as another's is, so a refusal tells nothing of others' keys.
            row = await gateway.store.get("keys", token)
            if row is None or not await _reads_key(gateway, caller, row):
                raise NotPermitted("This key may read only its own keys.")
        info = key_shape(await _row(gateway, token))
        del info["token"]  # LiteLLM leaves the hash out of /key/info
        return json_response({"key": token, "info": info})

    @app.get("/key/list")
    async def list_keys() -> Response:
        caller = await authorized(gateway)
        where = {c: v for c in ("team_id", "user_id", "key_alias") if (v := query_arg(c))}
        if reads_all(caller.role):
            rows = await gateway.store.select("keys", where, limit=MAX_LISTED)
        else:
            rows = [
                row
                for row in await _own_keys(gateway, caller)
                if all(row.get(c) == v for c, v in where.items())
            ]
        full = query_arg("return_full_object") in ("true", "1")
        keys: list[Any] = [key_shape(r) for r in rows] if full else [r["token_hash"] for r in rows]
        return json_response({"keys": keys, "total_count": len(keys)})

    @app.post("/key/regenerate")
    async def regenerate() -> Response:
        body, token, fields = await _change(gateway)
        row = await gateway.store.get("keys", token)
        if row is None:
            raise not_found("key", key_name(body.key))
        key = generate_key()
        fresh = {**row, **fields, **key_identity(key), "updated_at": wall_time()}
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


async def _change(gateway: Gateway) -> tuple[NamedKey, str, Row]:
    """A `/key/update` or `/key/regenerate` call: its body, the token of the key it names,
    and the fields it changes, a change the caller may make."""
    caller, body = await admin_call(gateway, NamedKey)
    token = token_hash_of(body.key)
    fields = {**limit_fields(body), **_key_fields(body)}
    not_reserved(fields.get("user_id"))
    await _may_change(gateway, caller, token, fields, body)
    return body, token, fields


# --- Self-service: what a caller that is not an admin may do to keys --------------------


async def _may_change(
    gateway: Gateway, caller: Caller, token: str, fields: Row, body: KeySettings | None
) -> None:
    """A change to an existing key by a caller that is not an admin: the key must be one
    it manages, and so must the key as changed. A key that does not exist is refused as
    another's is, so a refusal tells nothing of others' keys."""
    if writes_all(caller.role):
        return
    row = await gateway.store.get("keys", token)
    if row is None:
        raise NotPermitted(_NOT_YOURS)
    await _may_manage(gateway, caller, row, None)
    await _may_manage(gateway, caller, {**row, **fields}, body)


async def _may_delete(gateway: Gateway, caller: Caller, token: str) -> None:
    """A delete by a caller that is not an admin: a key of its own user (in a team or
    not: giving up a key takes no power from anyone), or one it manages."""
    if writes_all(caller.role):
        return
    row = await gateway.store.get("keys", token)
    if row is None:
        raise NotPermitted(_NOT_YOURS)
    if caller.user_id is None or row.get("user_id") != caller.user_id:
        await _may_manage(gateway, caller, row, None, giving_up=True)


async def _may_manage(
    gateway: Gateway,
    caller: Caller,
    key: Row,
    body: KeySettings | None,
    *,
    giving_up: bool = False,
) -> None:
    """Whether a caller that is not an admin may make or hold the key `key` (its
    `user_id` and `team_id`), and set the limits `body` asks for. LiteLLM's self-service:
    a user's own key, bound by the user's own limits; a team's key, by the team's admin,
    bound by the team's. A key acts with its user's role, so a team's admin makes,
    changes and regenerates only its own team keys and those of no user (a service
    account): one for another member would act as that member, a `proxy_admin` among
    them. It may delete any key of the team (`giving_up`): that takes no power from
    anyone but the key's holder."""
    if writes_all(caller.role):
        return
    team_id, user_id = key.get("team_id"), key.get("user_id")
    if team_id:
        if not await is_team_admin(gateway, caller, team_id):
            raise NotPermitted(f"Only an admin of team `{team_id}` may manage its keys.")
        if not giving_up and user_id is not None and user_id != caller.user_id:
            raise NotPermitted(
                "A team's admin makes and changes the team's keys for itself or for no "
                "user: a key of another member's would act with that member's role.",
                param="user_id",
            )
        owner, whose = await gateway.store.get("teams", team_id), "the team"
    else:
        if caller.user_id is None or user_id != caller.user_id:
            raise NotPermitted(_NOT_YOURS)
        owner, whose = await gateway.store.get("users", caller.user_id), "your user"
    if body is not None:
        if "blocked" in body.model_fields_set:
            raise NotPermitted("Only an admin blocks or unblocks a key.", param="blocked")
        for name in _ADMINS_ONLY:
            if name in body.model_fields_set:
                # What restricts a key is an admin's to set: its holder could otherwise
                # lift the MCP permissions or the guardrails an admin gave it.
                raise NotPermitted(f"Only an admin sets a key's `{name}`.", param=name)
        if owner is not None:
            _within(owner, body, whose, gateway.groups.access.covering)


# What a key holder may not set on a key, even its own: what restricts it.
_ADMINS_ONLY = ("object_permission", "guardrails")
_NOT_YOURS = "This key may manage only its user's own keys, and its teams' as their admin."
# The numeric limits a key may not set above its owner's (user's or team's).
_BOUNDED = ("max_budget", "soft_budget", "rpm_limit", "tpm_limit", "max_parallel_requests")


def _within(owner: Row, body: Limits, whose: str, covering: Covering) -> None:
    """A self-service key may not be given more than its owner has: models outside the
    owner's, or a budget or rate above the owner's. (Its owner's limits bind it on every
    request anyway; this says so when the key is made, not at its first request.)"""
    allowed: list[str] = owner.get("models") or []
    if body.models and allowed:
        beyond = [m for m in body.models if not _model_allowed(allowed, m, covering)]
        if beyond:
            raise NotPermitted(f"`models`: {whose} may not use {beyond}.", param="models")
    for name in _BOUNDED:
        mine, wanted = owner.get(name), getattr(body, name)
        if mine is not None and wanted is not None and wanted > mine:
            raise NotPermitted(f"`{name}`: {wanted} is above {whose}'s {mine}.", param=name)


def _model_allowed(allowed: list[str], model: str, covering: Covering) -> bool:
    """As the request path reads `models` (trigate/limits.py): a name, a pattern, or an
    access group; or the name of a group the owner may use whole."""
    return allowed_by(allowed, model, covering) or model in allowed


async def _reads_key(gateway: Gateway, caller: Caller, row: Row) -> bool:
    """Whether a caller that reads only its own may read another key: its user's, or its
    team's where it is the team's admin."""
    if caller.user_id not in (None, MASTER_USER_ID) and row.get("user_id") == caller.user_id:
        return True
    team_id = row.get("team_id")
    return team_id is not None and await is_team_admin(gateway, caller, team_id)


async def _own_keys(gateway: Gateway, caller: Caller) -> list[Row]:
    """The keys a caller that reads only its own may list: itself, its user's, and those
    of teams it is the admin of."""
    rows = {caller.key_hash: caller.key} if caller.key_hash and caller.key else {}
    # The master key's recorded id owns nothing (a key made with it before it was reserved).
    if caller.user_id is not None and caller.user_id != MASTER_USER_ID:
        for row in await gateway.store.select("keys", {"user_id": caller.user_id}, MAX_LISTED):
            rows[row["token_hash"]] = row
        for membership in await gateway.store.member_teams(caller.user_id):
            if membership["role"] == "admin" and membership["team_id"]:
                team = {"team_id": membership["team_id"]}
                for row in await gateway.store.select("keys", team, MAX_LISTED):
                    rows[row["token_hash"]] = row
    return list(rows.values())


def key_identity(key: str) -> dict[str, str]:
    """What the store keeps to recognise a key: its hash and a harmless display name."""
    return {"token_hash": hash_key(key), "key_name": key_name(key)}


def _key_fields(body: KeySettings) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: getattr(body, name)
        for name in ("key_alias", "user_id", "team_id")
        if name in body.model_fields_set
    }
    if body.object_permission is not None:
        fields["object_permission"] = body.object_permission.stored()
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
    if gateway.alerts is not None:
        gateway.alerts.key_created(row)


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
