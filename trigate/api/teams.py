"""`/team/*` and `/user/*`: LiteLLM's teams and users, whose limits bind their keys."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import Field
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import (
    Limits,
    admin_body,
    created_fields,
    insert_new,
    limit_fields,
    not_found,
    query_arg,
    require_master,
    shaped,
)
from trigate.api.jsonio import json_response
from trigate.api.keys import key_identity
from trigate.auth import generate_key
from trigate.clock import wall_time
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway


class TeamSettings(Limits):
    team_id: str | None = None
    team_alias: str | None = None


class NamedTeam(TeamSettings):
    team_id: str


class DeleteTeams(Limits):
    team_ids: list[str] = Field(min_length=1)


class UserSettings(Limits):
    user_id: str | None = None
    user_email: str | None = None
    # LiteLLM's /user/new also issues the user a key unless told not to.
    auto_create_key: bool = True


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/team/new")
    async def new_team() -> Response:
        body = await admin_body(gateway, TeamSettings)
        row = {
            **created_fields(body),
            "team_id": body.team_id or str(uuid.uuid4()),
            "team_alias": body.team_alias,
        }
        await insert_new(gateway, "teams", row)
        return json_response(shaped(row))

    @app.post("/team/update")
    async def update_team() -> Response:
        body = await admin_body(gateway, NamedTeam)
        fields = limit_fields(body)
        if "team_alias" in body.model_fields_set:
            fields["team_alias"] = body.team_alias
        if not await gateway.store.update(
            "teams", body.team_id, {**fields, "updated_at": wall_time()}
        ):
            raise not_found("team", body.team_id)
        gateway.auth.forget("teams", body.team_id)
        return json_response(await _team_info(gateway, body.team_id))

    @app.post("/team/delete")
    async def delete_team() -> Response:
        body = await admin_body(gateway, DeleteTeams)
        deleted, keys = await gateway.store.delete_teams(body.team_ids)
        for team_id in body.team_ids:
            gateway.auth.forget("teams", team_id)
        for token in keys:
            gateway.auth.forget("keys", token)
        return json_response(
            {"deleted_teams": body.team_ids, "count": deleted, "deleted_keys": keys}
        )

    @app.get("/team/info")
    async def team_info() -> Response:
        await require_master(gateway)
        team_id = query_arg("team_id")
        if team_id is None:
            raise InvalidRequest("Pass `?team_id=`.", param="team_id")
        return json_response(await _team_info(gateway, team_id))

    @app.get("/team/list")
    async def list_teams() -> Response:
        await require_master(gateway)
        return json_response([shaped(row) for row in await gateway.store.select("teams", {})])

    @app.post("/user/new")
    async def new_user() -> Response:
        body = await admin_body(gateway, UserSettings)
        row = {
            **created_fields(body),
            "user_id": body.user_id or str(uuid.uuid4()),
            "user_email": body.user_email,
        }
        await insert_new(gateway, "users", row)
        answer = shaped(row)
        if body.auto_create_key:
            key = generate_key()
            now = wall_time()
            identity = key_identity(key)
            await gateway.store.insert(
                "keys",
                {**identity, "user_id": row["user_id"], "created_at": now, "updated_at": now},
            )
            answer |= {"key": key, "token": identity["token_hash"]}
        return json_response(answer)

    @app.get("/user/info")
    async def user_info() -> Response:
        await require_master(gateway)
        user_id = query_arg("user_id")
        if user_id is None:
            raise InvalidRequest("Pass `?user_id=`.", param="user_id")
        row = await gateway.store.get("users", user_id)
        if row is None:
            raise not_found("user", user_id)
        keys = await gateway.store.select("keys", {"user_id": user_id})
        return json_response(
            {"user_id": user_id, "user_info": shaped(row), "keys": [shaped(k) for k in keys]}
        )


async def _team_info(gateway: Gateway, team_id: str) -> dict[str, Any]:
    row = await gateway.store.get("teams", team_id)
    if row is None:
        raise not_found("team", team_id)
    keys = await gateway.store.select("keys", {"team_id": team_id})
    return {"team_id": team_id, "team_info": shaped(row), "keys": [shaped(k) for k in keys]}
