"""`/user/*`: LiteLLM's users, whose limits bind their keys and whose `user_role` is
what their keys may do on the admin API (trigate/roles.py). Writes are an admin's; a
key reads its own user, an admin or admin viewer any.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import (
    Limits,
    admin_body,
    authorized,
    created_fields,
    insert_new,
    limit_fields,
    not_found,
    not_reserved,
    permit,
    query_arg,
    shaped,
)
from trigate.api.jsonio import json_response
from trigate.api.keys import key_identity, key_shape
from trigate.api.teams import membership_shape, with_members
from trigate.auth import generate_key
from trigate.clock import wall_time
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.roles import Role


class UserLimits(Limits):
    """A user's limits: those of `Limits` but `blocked`, which no request checks of a
    user (a key, or its team, is what is blocked): asking to block a user is refused
    rather than stored and silently not enforced."""

    @field_validator("blocked")
    @classmethod
    def _not_blocked(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError(
                "trigate does not block users; block their keys (`/key/block`) or delete the user"
            )
        return value


class UserSettings(UserLimits):
    user_id: str | None = None
    user_email: str | None = None
    user_role: Role | None = None
    # LiteLLM's /user/new also issues the user a key unless told not to.
    auto_create_key: bool = True
    # LiteLLM's: the user joins this team as a `user` member, and its key is the team's.
    team_id: str | None = None


class UpdateUser(UserLimits):
    """LiteLLM's `/user/update`: the user by id, else the first with that email; a user
    id no user has yet is made, as LiteLLM upserts."""

    user_id: str | None = None
    user_email: str | None = None
    user_role: Role | None = None

    @model_validator(mode="after")
    def _named(self) -> UpdateUser:
        if self.user_id is None and self.user_email is None:
            raise ValueError("Either `user_id` or `user_email` must be provided")
        return self


class DeleteUsers(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_ids: list[str] = Field(min_length=1)


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/user/new")
    async def new_user() -> Response:
        body = await admin_body(gateway, UserSettings)
        not_reserved(body.user_id)
        row = {
            **created_fields(body),
            "user_id": body.user_id or str(uuid.uuid4()),
            "user_email": body.user_email,
            "user_role": _role_name(body.user_role),
        }
        if body.team_id is not None and await gateway.store.get("teams", body.team_id) is None:
            raise InvalidRequest(f"Team id={body.team_id} does not exist.", param="team_id")
        await insert_new(gateway, "users", row)
        if body.team_id is not None:
            membership = {"team_id": body.team_id, "user_id": row["user_id"], "role": "user"}
            await gateway.store.add_members(
                [{**membership, "user_email": body.user_email, "created_at": wall_time()}]
            )
        answer = shaped(row) | {"team_id": body.team_id}
        if body.auto_create_key:
            key = generate_key()
            now = wall_time()
            identity = key_identity(key)
            owners = {"user_id": row["user_id"], "team_id": body.team_id}
            await gateway.store.insert(
                "keys", {**identity, **owners, "created_at": now, "updated_at": now}
            )
            answer |= {"key": key, "token": identity["token_hash"]}
        return json_response(answer)

    @app.post("/user/update")
    async def update_user() -> Response:
        body = await admin_body(gateway, UpdateUser)
        not_reserved(body.user_id)
        user_id = body.user_id or await _user_by_email(gateway, body.user_email)
        fields = limit_fields(body)
        if body.user_id is not None and body.user_email is not None:
            fields["user_email"] = body.user_email
        # A null role, as LiteLLM's clients send for fields they leave alone, changes nothing.
        if body.user_role is not None:
            fields["user_role"] = body.user_role.value
        if not await gateway.store.update("users", user_id, {**fields, "updated_at": wall_time()}):
            created = {**created_fields(body), **fields, "user_id": user_id}
            await insert_new(gateway, "users", created)
        row = await gateway.store.get("users", user_id)
        if row is None:  # deleted since
            raise not_found("user", user_id)
        return json_response({"user_id": user_id, "data": shaped(row)})

    @app.post("/user/delete")
    async def delete_user() -> Response:
        body = await admin_body(gateway, DeleteUsers)
        deleted, keys = await gateway.store.delete_with_keys("users", body.user_ids)
        return json_response(
            {"deleted_users": body.user_ids, "count": deleted, "deleted_keys": keys}
        )

    @app.get("/user/list")
    async def list_users() -> Response:
        """LiteLLM's `/user/list`: every user (a reader of all's), filtered by `role`
        and `user_ids` (comma-separated), in pages of `page_size` (25 by default)."""
        await authorized(gateway)
        where = {"user_role": role} if (role := query_arg("role")) else {}
        rows = await gateway.store.select("users", where, limit=MAX_LISTED_USERS)
        if wanted := query_arg("user_ids"):
            named = set(wanted.split(","))
            rows = [row for row in rows if row["user_id"] in named]
        page, size = _page_arg("page", 1), _page_arg("page_size", 25)
        shown = rows[(page - 1) * size : page * size]
        return json_response(
            {
                "users": [shaped(row) for row in shown],
                "total": len(rows),
                "page": page,
                "page_size": size,
                "total_pages": max(1, -(-len(rows) // size)),
            }
        )

    @app.get("/user/info")
    async def user_info() -> Response:
        caller = await authorized(gateway)
        # Without `?user_id=`, a key reads its own user, as in LiteLLM.
        user_id = query_arg("user_id") or caller.user_id
        if user_id is None:
            raise InvalidRequest("Pass `?user_id=`.", param="user_id")
        permit(caller, user_id == caller.user_id, "user's /user/info")
        row = await gateway.store.get("users", user_id)
        if row is None:
            raise not_found("user", user_id)
        keys = await gateway.store.select("keys", {"user_id": user_id})
        teams = []
        for membership in await gateway.store.memberships(user_id):
            team = await gateway.store.get("teams", membership["team_id"])
            if team is not None:
                # LiteLLM's: the user's own membership of the team, its spend and budget.
                own = membership_shape(membership)
                teams.append({**await with_members(gateway, team), "team_memberships": [own]})
        info = {**shaped(row), "teams": [team["team_id"] for team in teams]}
        return json_response(
            {
                "user_id": user_id,
                "user_info": info,
                "keys": [key_shape(k) for k in keys],
                "teams": teams,
            }
        )


# The most users `/user/list` reads.
MAX_LISTED_USERS = 10_000


def _page_arg(name: str, default: int) -> int:
    value = query_arg(name) or str(default)
    if not (value.isascii() and value.isdigit() and 0 < len(value) <= 5 and int(value) > 0):
        raise InvalidRequest(f"`{name}` must be a whole number from 1.", param=name)
    return int(value)


def _role_name(role: Role | None) -> str | None:
    """A role as stored: its plain name (a database driver may write an enum otherwise)."""
    return role.value if role is not None else None


async def _user_by_email(gateway: Gateway, email: str | None) -> str:
    found = await gateway.store.select("users", {"user_email": email}, limit=1)
    if not found:
        raise not_found("user", f"with email {email}")
    return str(found[0]["user_id"])
