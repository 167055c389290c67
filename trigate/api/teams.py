"""`/team/*`: LiteLLM's teams, whose limits bind their keys (users: users.py).

A team has members (`members_with_roles`), each a user with the role `admin` or
`user`. A team's admin (a key whose user is an `admin` member) may add, remove
and re-role the team's members, and (trigate/api/keys.py) manage its keys; the
team itself is an admin's to make, change and delete, and its creator becomes its
`admin` member, as in LiteLLM. A key reads its own teams (its key's, or those its
user is a member of); an admin or admin viewer reads any (trigate/roles.py).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import (
    Limits,
    NamedUser,
    NotPermitted,
    admin_body,
    admin_call,
    authorized,
    created_fields,
    insert_new,
    is_team_admin,
    limit_fields,
    not_found,
    permit,
    query_arg,
    shaped,
)
from trigate.api.guardrails import set_guardrails
from trigate.api.jsonio import json_response
from trigate.api.keys import key_shape
from trigate.api.organizations import check_team
from trigate.auth import Caller
from trigate.clock import wall_time
from trigate.errors import InvalidRequest, echoed
from trigate.gateway import Gateway
from trigate.mcp_gateway.permissions import ObjectPermission
from trigate.roles import MASTER_USER_ID, reads_all, writes_all
from trigate.store import MEMBER_LIMITS, Row, member_ident


class Member(NamedUser):
    """LiteLLM's team member: a user named by id or by email, with a role."""

    role: Literal["admin", "user"] = "user"


class TeamSettings(Limits):
    team_id: str | None = None
    # LiteLLM's: the guardrails the team's keys' requests run (kept in its metadata).
    guardrails: list[str] | None = None
    team_alias: str | None = None
    model_aliases: dict[str, str] | None = None
    organization_id: str | None = None
    # LiteLLM's MCP permissions (trigate.mcp_gateway.permissions).
    object_permission: ObjectPermission | None = None


class NewTeam(TeamSettings):
    members_with_roles: list[Member] = Field(default_factory=list)


class NamedTeam(TeamSettings):
    team_id: str


class DeleteTeams(Limits):
    team_ids: list[str] = Field(min_length=1)


class MemberChange(BaseModel):
    """What `/team/member_*` share: the team, and the member's limits within it
    (LiteLLM's `max_budget_in_team`, and its `tpm_limit`/`rpm_limit`), which bind the
    requests of the member's keys in this team beside the key's, team's and user's own."""

    model_config = ConfigDict(extra="ignore")

    team_id: str
    max_budget_in_team: float | None = Field(default=None, ge=0)
    tpm_limit: int | None = Field(default=None, ge=0)
    rpm_limit: int | None = Field(default=None, ge=0)

    def member_limits(self) -> Row:
        """The membership columns this call sets: those it names (a null clears one)."""
        names = {"max_budget_in_team": "max_budget", "tpm_limit": "tpm_limit",
                 "rpm_limit": "rpm_limit"}  # fmt: skip
        return {
            column: getattr(self, field)
            for field, column in names.items()
            if field in self.model_fields_set
        }


class AddMembers(MemberChange):
    member: Member | list[Member]


class NamedMember(MemberChange, NamedUser):
    pass


class UpdateMember(NamedMember):
    role: Literal["admin", "user"] | None = None


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/team/new")
    async def new_team() -> Response:
        caller, body = await admin_call(gateway, NewTeam)
        _check_unique(body.members_with_roles)
        await check_team(gateway, body.organization_id, body.models)
        row = {
            **created_fields(body),
            "team_id": body.team_id or str(uuid.uuid4()),
            "team_alias": body.team_alias,
            "model_aliases": body.model_aliases or {},
            "organization_id": body.organization_id,
            "object_permission": _permission(body),
        }
        set_guardrails(gateway, body.guardrails, row, None)
        await insert_new(gateway, "teams", row)
        creator = _creator(caller, body.members_with_roles, row["team_id"])
        await _add_members(gateway, row["team_id"], body.members_with_roles, creator, admin=True)
        return json_response(await _team_shape(gateway, row["team_id"]))

    @app.post("/team/update")
    async def update_team() -> Response:
        body = await admin_body(gateway, NamedTeam)
        fields = limit_fields(body)
        if "team_alias" in body.model_fields_set:
            fields["team_alias"] = body.team_alias
        # A null, as LiteLLM's clients send for fields they leave alone, changes nothing.
        if body.model_aliases is not None:
            fields["model_aliases"] = body.model_aliases
        if body.object_permission is not None:
            fields["object_permission"] = _permission(body)
        if body.organization_id is not None or "models" in fields:
            current = await gateway.store.get("teams", body.team_id) or {}
            organization_id = body.organization_id or current.get("organization_id")
            await check_team(gateway, organization_id, fields.get("models", current.get("models")))
            fields["organization_id"] = organization_id
        if body.guardrails is not None:
            current_team = await gateway.store.get("teams", body.team_id)
            set_guardrails(gateway, body.guardrails, fields, current_team)
        if not await gateway.store.update(
            "teams", body.team_id, {**fields, "updated_at": wall_time()}
        ):
            raise not_found("team", body.team_id)
        return json_response(
            {"team_id": body.team_id, "data": await _team_shape(gateway, body.team_id)}
        )

    @app.post("/team/delete")
    async def delete_team() -> Response:
        body = await admin_body(gateway, DeleteTeams)
        deleted, keys = await gateway.store.delete_with_keys("teams", body.team_ids)
        return json_response(
            {"deleted_teams": body.team_ids, "count": deleted, "deleted_keys": keys}
        )

    @app.get("/team/info")
    async def team_info() -> Response:
        caller = await authorized(gateway)
        # Without `?team_id=`, a key reads its own team, as in LiteLLM.
        team_id = query_arg("team_id") or caller.team_id
        if team_id is None:
            raise InvalidRequest("Pass `?team_id=`.", param="team_id")
        permit(caller, await _in_team(gateway, caller, team_id), "team's /team/info")
        return json_response(await _team_info(gateway, team_id))

    @app.get("/team/list")
    async def list_teams() -> Response:
        caller = await authorized(gateway)
        if reads_all(caller.role):
            rows = await gateway.store.select("teams", {})
        else:
            rows = await _own_teams(gateway, caller)
        return json_response([await with_members(gateway, row) for row in rows])

    @app.post("/team/member_add")
    async def member_add() -> Response:
        caller, body = await _team_admin_call(gateway, AddMembers)
        members = body.member if isinstance(body.member, list) else [body.member]
        if await gateway.store.get("teams", body.team_id) is None:
            raise not_found("team", body.team_id)
        _check_unique(members)
        present = {m["user_id"] for m in await gateway.store.team_members(body.team_id)}
        admin = writes_all(caller.role)
        users = await _add_members(
            gateway, body.team_id, members, present=present, admin=admin,
            limits=body.member_limits(),
        )  # fmt: skip
        team = await _team_shape(gateway, body.team_id)
        # A team's admin is told only what it named and the id it was found by: another
        # user's profile (budget, spend, metadata) is `/user/info`'s, which it may not read.
        updated = [
            shaped(user) if admin else _as_named(user, member)
            for user, member in zip(users, members, strict=True)
        ]
        memberships = [
            membership_shape(row)
            for user in users
            if (row := await gateway.store.member(member_ident(body.team_id, user["user_id"])))
        ]
        return json_response(
            {**team, "updated_users": updated, "updated_team_memberships": memberships}
        )

    @app.post("/team/member_delete")
    async def member_delete() -> Response:
        body = await _team_admin_body(gateway, NamedMember)
        user_id = await _member_id(gateway, body)
        if not await gateway.store.remove_member(body.team_id, user_id):
            raise InvalidRequest("User not found in team.", param="user_id")
        return json_response(await _team_shape(gateway, body.team_id))

    @app.post("/team/member_update")
    async def member_update() -> Response:
        body = await _team_admin_body(gateway, UpdateMember)
        user_id = await _member_id(gateway, body)
        if body.role is not None:
            await gateway.store.set_member_role(body.team_id, user_id, body.role)
        await gateway.store.set_member_limits(body.team_id, user_id, body.member_limits())
        member = await gateway.store.member(member_ident(body.team_id, user_id))
        if member is None:  # removed since
            raise InvalidRequest("User not found in team.", param="user_id")
        return json_response(
            {
                "team_id": body.team_id,
                "user_id": user_id,
                "user_email": body.user_email,
                "max_budget_in_team": member["max_budget"],
                "tpm_limit": member["tpm_limit"],
                "rpm_limit": member["rpm_limit"],
            }
        )


C = TypeVar("C", bound=MemberChange)


async def _team_admin_body(gateway: Gateway, model: type[C]) -> C:
    return (await _team_admin_call(gateway, model))[1]


async def _team_admin_call(gateway: Gateway, model: type[C]) -> tuple[Caller, C]:
    """The caller and body of a `/team/member_*` call, from an admin or the team's
    admin. The body names the team, so it is read before the caller's right to it is
    checked."""
    caller, body = await admin_call(gateway, model)
    if not writes_all(caller.role) and not await is_team_admin(gateway, caller, body.team_id):
        raise NotPermitted("Only an admin, or an admin of this team, may change its members.")
    return caller, body


async def _in_team(gateway: Gateway, caller: Caller, team_id: str) -> bool:
    """Whether a team is the caller's own: its key's team, or one its user is in."""
    if caller.team_id == team_id:
        return True
    if caller.user_id is None or caller.user_id == MASTER_USER_ID:
        return False
    return any(m["user_id"] == caller.user_id for m in await gateway.store.team_members(team_id))


async def _own_teams(gateway: Gateway, caller: Caller) -> list[Row]:
    """The teams a caller that reads only its own may list: its key's, and its user's."""
    ids = [caller.team_id] if caller.team_id else []
    if caller.user_id is not None and caller.user_id != MASTER_USER_ID:
        ids += [m["team_id"] for m in await gateway.store.member_teams(caller.user_id)]
    rows = [await gateway.store.get("teams", team_id) for team_id in dict.fromkeys(ids)]
    return [row for row in rows if row is not None]


def _creator(caller: Caller, members: list[Member], team_id: str) -> list[Row]:
    """The membership LiteLLM gives a team's creator: `admin`, under its user id (the
    master key's is `MASTER_USER_ID`), unless the members named it already. No user is
    made for it."""
    creator = MASTER_USER_ID if caller.is_master else caller.user_id
    if creator is None or any(member.user_id == creator for member in members):
        return []
    return [{"team_id": team_id, "user_id": creator, "user_email": None, "role": "admin"}]


def _check_unique(members: list[Member]) -> None:
    named = [m.user_id or m.user_email for m in members]
    if len(set(named)) != len(named):
        raise InvalidRequest("A member is named twice.", param="member")


async def _add_members(
    gateway: Gateway,
    team_id: str,
    members: list[Member],
    extra: list[Row] | None = None,
    *,
    present: set[str] | None = None,
    admin: bool,
    limits: Row | None = None,
) -> list[Row]:
    """Make each member's user as LiteLLM does (a user named only by email is found by
    it, or made with a fresh id), then add the memberships, with the `extra` ones given
    whole, in one transaction, each with `limits` (its `MEMBER_LIMITS`). Returns the
    members' user rows. Only an `admin` makes
    users: a team's admin adds users that exist, and learns of them no more than it
    named."""
    now = wall_time()
    users, rows = [], [{**row, "created_at": now} for row in extra or []]
    for member in members:
        user = await _user_of(gateway, member, now, create=admin)
        if present is not None and user["user_id"] in present:
            raise InvalidRequest(
                f"User `{user['user_id']}` is already a member of this team.", param="member"
            )
        users.append(user)
        rows.append(
            {
                "team_id": team_id,
                "user_id": user["user_id"],
                "user_email": member.user_email or (user.get("user_email") if admin else None),
                "role": member.role,
                "created_at": now,
                **(limits or {}),
            }
        )
    await gateway.store.add_members(rows)
    return users


async def _user_of(gateway: Gateway, member: Member, now: float, *, create: bool) -> Row:
    if create:
        return await member.made_user(gateway, now)
    user = await member.user(gateway)
    if user is None:
        raise InvalidRequest(
            f"No user `{echoed(member.user_id or member.user_email or '')}` exists; only an "
            "admin makes users (`/user/new`, or adding a new member itself).",
            param="member",
            code="user_not_found",
        )
    return user


def _as_named(user: Row, member: Member) -> Row:
    return {"user_id": user["user_id"], "user_email": member.user_email}


async def _member_id(gateway: Gateway, body: NamedMember) -> str:
    """The user a `/team/member_*` call names, who must be in the team (LiteLLM's 400s)."""
    if await gateway.store.get("teams", body.team_id) is None:
        raise InvalidRequest(f"Team id={body.team_id} does not exist.", param="team_id")
    for member in await gateway.store.team_members(body.team_id):
        if member["user_id"] == body.user_id or (
            body.user_id is None and member["user_email"] == body.user_email
        ):
            return str(member["user_id"])
    raise InvalidRequest("User not found in team.", param="user_id")


def membership_shape(row: Row) -> Row:
    """A membership as LiteLLM's `LiteLLM_TeamMembership`: its spend in the team, and its
    limits as a `litellm_budget_table` (null when it has none)."""
    limits = {name: row.get(name) for name in MEMBER_LIMITS}
    has_limits = any(value is not None for value in limits.values())
    return {
        "team_id": row["team_id"],
        "user_id": row["user_id"],
        "spend": float(row.get("spend") or 0.0),
        "litellm_budget_table": limits if has_limits else None,
    }


async def with_members(gateway: Gateway, row: Row) -> Row:
    members = await gateway.store.team_members(row["team_id"])
    return {**shaped(row), "members_with_roles": members}


async def _team_shape(gateway: Gateway, team_id: str) -> Row:
    row = await gateway.store.get("teams", team_id)
    if row is None:
        raise not_found("team", team_id)
    return await with_members(gateway, row)


async def _team_info(gateway: Gateway, team_id: str) -> dict[str, Any]:
    team = await _team_shape(gateway, team_id)
    keys = await gateway.store.select("keys", {"team_id": team_id})
    return {"team_id": team_id, "team_info": team, "keys": [key_shape(k) for k in keys]}


def _permission(body: TeamSettings) -> dict[str, Any]:
    return body.object_permission.stored() if body.object_permission is not None else {}
