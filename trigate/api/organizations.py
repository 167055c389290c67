"""`/organization/*`: LiteLLM's organizations, which own teams.

An organization's `models` bound its teams: a team in it may not be given a model the
organization lacks (checked when the team is made or changed, `check_team`), and every
request of the team's keys must pass the organization's models too (`trigate.limits`).
Its limits live in a budget (`/budget/*`), made for it when none is named, as LiteLLM
does; its budget and rate limits bind every key of its teams together, admitted in the
same step as the key's own, and each such request's cost is billed to it. Deleting an
organization deletes its teams and their keys, as LiteLLM's does. Members
(`/organization/member_*`) are users with an organization role. Every route needs the
master key.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import (
    NamedUser,
    admin_body,
    iso,
    not_found,
    query_arg,
    require_master,
    shaped,
)
from trigate.api.budgets import (
    ADMIN_NAME,
    BudgetLimits,
    budget_of,
    change_budget,
    create_budget,
    limit_values,
    linked_budget,
    linked_limits,
)
from trigate.api.jsonio import json_response
from trigate.clock import wall_time
from trigate.errors import InvalidRequest, echoed
from trigate.gateway import Gateway
from trigate.limits import allowed_by
from trigate.store import ORGANIZATIONS, TEAMS, Row


class OrganizationFields(BudgetLimits):
    organization_alias: str | None = None
    models: list[str] | None = None
    budget_id: str | None = None
    metadata: dict[str, Any] | None = None
    blocked: bool | None = None
    object_permission: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _no_object_permissions(self) -> OrganizationFields:
        permission = self.object_permission
        if permission and any(permission.values()):
            raise ValueError(
                "`object_permission`: trigate serves no MCP servers, vector stores or agents "
                "to permit"
            )
        return self


class NewOrganization(OrganizationFields):
    organization_id: str | None = None
    organization_alias: str = Field(min_length=1)


class UpdateOrganization(OrganizationFields):
    organization_id: str


class OrganizationIds(BaseModel):
    model_config = ConfigDict(extra="ignore")

    organization_ids: list[str] = Field(min_length=1)


class OrganizationList(BaseModel):
    """The older `POST /organization/info` body."""

    model_config = ConfigDict(extra="ignore")

    organizations: list[str] = Field(min_length=1)


class OrgMember(NamedUser):
    # LiteLLM's roles an organization member may hold.
    role: Literal["org_admin", "internal_user", "internal_user_viewer"] = "internal_user"


class AddMembers(BaseModel):
    model_config = ConfigDict(extra="ignore")

    organization_id: str
    member: OrgMember | list[OrgMember]
    max_budget_in_organization: float | None = None

    @model_validator(mode="after")
    def _no_member_budget(self) -> AddMembers:
        if self.max_budget_in_organization is not None:
            raise ValueError(
                "`max_budget_in_organization`: trigate keeps no per-member budget; set it "
                "on the member's user or keys"
            )
        return self


class NamedMember(NamedUser):
    organization_id: str


async def check_team(
    gateway: Gateway, organization_id: str | None, models: list[str] | None
) -> None:
    """A team joining (or in) an organization: the organization exists, and the team's
    models are among its own (a team without models would reach every model, so in an
    organization with models it is refused)."""
    if organization_id is None:
        return
    organization = await gateway.store.get(ORGANIZATIONS.kind, organization_id)
    if organization is None:
        raise InvalidRequest(
            f"No organization `{echoed(organization_id)}` exists.", param="organization_id"
        )
    allowed = organization.get("models") or []
    if not allowed:
        return
    if not models:
        raise InvalidRequest(
            "A team in an organization with models must name its own, from the "
            f"organization's: {', '.join(allowed)}.",
            param="models",
        )
    for model in models:
        if not allowed_by(allowed, model, gateway.groups.access.covering):
            raise InvalidRequest(
                f"The team's model `{echoed(model)}` is not among its organization's: "
                f"{', '.join(allowed)}.",
                param="models",
            )


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/organization/new")
    async def new_organization() -> Response:
        body = await admin_body(gateway, NewOrganization)
        organization_id = body.organization_id or str(uuid.uuid4())
        if await gateway.store.get(ORGANIZATIONS.kind, organization_id) is not None:
            raise InvalidRequest(
                f"Organization `{organization_id}` exists already.", param="organization_id"
            )
        limits = limit_values(body)
        if body.budget_id is not None:
            budget = await linked_budget(gateway, body.budget_id, limits)
        else:
            # Every organization has a budget, as in LiteLLM: made from the fields given.
            budget = await create_budget(gateway, limits)
        now = wall_time()
        row = {
            "organization_id": organization_id,
            "organization_alias": body.organization_alias,
            "budget_id": budget["budget_id"],
            **linked_limits(budget),
            "models": body.models or [],
            "metadata": body.metadata or {},
            "blocked": bool(body.blocked),
            "created_by": ADMIN_NAME,
            "updated_by": ADMIN_NAME,
            "created_at": now,
            "updated_at": now,
        }
        await gateway.store.insert(ORGANIZATIONS.kind, row)
        return json_response(await _shape(gateway, row))

    @app.route("/organization/update", methods=["PATCH", "POST"])
    async def update_organization() -> Response:
        body = await admin_body(gateway, UpdateOrganization)
        current = await gateway.store.get(ORGANIZATIONS.kind, body.organization_id)
        if current is None:
            raise not_found("organization", body.organization_id)
        fields: Row = {}
        limits = limit_values(body)
        if body.budget_id is not None:
            budget = await linked_budget(gateway, body.budget_id, limits)
            fields |= {"budget_id": body.budget_id, **linked_limits(budget)}
        elif limits:
            await change_budget(gateway, current["budget_id"], limits)
        for name in ("organization_alias", "models", "metadata", "blocked"):
            value = getattr(body, name)
            if value is not None:
                fields[name] = value
        fields |= {"updated_at": wall_time(), "updated_by": ADMIN_NAME}
        if not await gateway.store.update(ORGANIZATIONS.kind, body.organization_id, fields):
            raise not_found("organization", body.organization_id)
        return json_response(await _shape_of(gateway, body.organization_id))

    @app.route("/organization/delete", methods=["DELETE", "POST"])
    async def delete_organizations() -> Response:
        body = await admin_body(gateway, OrganizationIds)
        shapes = [await _shape_of(gateway, ident) for ident in dict.fromkeys(body.organization_ids)]
        await gateway.store.delete_organizations(list(dict.fromkeys(body.organization_ids)))
        return json_response(shapes)

    @app.get("/organization/list")
    async def list_organizations() -> Response:
        await require_master(gateway)
        rows = await gateway.store.select(ORGANIZATIONS.kind, {}, limit=100_000)
        return json_response([await _shape(gateway, row) for row in rows])

    @app.get("/organization/info")
    async def organization_info() -> Response:
        await require_master(gateway)
        organization_id = query_arg("organization_id")
        if organization_id is None:
            raise InvalidRequest("Pass `?organization_id=`.", param="organization_id")
        return json_response(await _shape_of(gateway, organization_id))

    @app.post("/organization/info")
    async def organizations_info() -> Response:
        body = await admin_body(gateway, OrganizationList)
        return json_response([await _shape_of(gateway, ident) for ident in body.organizations])

    @app.post("/organization/member_add")
    async def organization_member_add() -> Response:
        body = await admin_body(gateway, AddMembers)
        if await gateway.store.get(ORGANIZATIONS.kind, body.organization_id) is None:
            raise not_found("organization", body.organization_id)
        members = body.member if isinstance(body.member, list) else [body.member]
        present = {
            m["user_id"] for m in await gateway.store.organization_members(body.organization_id)
        }
        now = wall_time()
        users, memberships = [], []
        for member in members:
            user = await member.made_user(gateway, now)
            if user["user_id"] in present:
                raise InvalidRequest(
                    f"User `{user['user_id']}` is already a member of this organization.",
                    param="member",
                )
            present.add(user["user_id"])
            users.append(shaped(user))
            memberships.append(
                {
                    "organization_id": body.organization_id,
                    "user_id": user["user_id"],
                    "user_email": member.user_email or user.get("user_email"),
                    "user_role": member.role,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        await gateway.store.add_organization_members(memberships)
        return json_response(
            {
                "organization_id": body.organization_id,
                "updated_users": users,
                "updated_organization_memberships": [_membership(m) for m in memberships],
            }
        )

    @app.route("/organization/member_delete", methods=["DELETE", "POST"])
    async def organization_member_delete() -> Response:
        body = await admin_body(gateway, NamedMember)
        if await gateway.store.get(ORGANIZATIONS.kind, body.organization_id) is None:
            raise not_found("organization", body.organization_id)
        for member in await gateway.store.organization_members(body.organization_id):
            if member["user_id"] == body.user_id or (
                body.user_id is None and member["user_email"] == body.user_email
            ):
                await gateway.store.remove_organization_member(
                    body.organization_id, member["user_id"]
                )
                return json_response(_membership(member))
        raise InvalidRequest("User not found in organization.", param="user_id")


def _membership(row: Row) -> Row:
    return {
        **row,
        "spend": 0.0,
        "budget_id": None,
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


async def _shape_of(gateway: Gateway, organization_id: str) -> Row:
    row = await gateway.store.get(ORGANIZATIONS.kind, organization_id)
    if row is None:
        raise not_found("organization", organization_id)
    return await _shape(gateway, row)


async def _shape(gateway: Gateway, row: Row) -> Row:
    """An organization as LiteLLM's `LiteLLM_OrganizationTableWithMembers` shows it."""
    organization_id = row["organization_id"]
    members = await gateway.store.organization_members(organization_id)
    teams = await gateway.store.select(TEAMS.kind, {"organization_id": organization_id})
    return {
        "organization_id": organization_id,
        "organization_alias": row.get("organization_alias"),
        "budget_id": row.get("budget_id"),
        "spend": row.get("spend", 0.0),
        "model_spend": {},
        "models": row.get("models") or [],
        "metadata": row.get("metadata") or {},
        "blocked": row.get("blocked", False),
        "created_by": row.get("created_by"),
        "updated_by": row.get("updated_by"),
        "budget_reset_at": iso(row.get("budget_reset_at")),
        "created_at": iso(row.get("created_at")),
        "updated_at": iso(row.get("updated_at")),
        "litellm_budget_table": await budget_of(gateway, row.get("budget_id")),
        "members": [_membership(m) for m in members],
        "teams": [shaped(team) for team in teams],
    }
