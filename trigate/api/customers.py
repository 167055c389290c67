"""`/customer/*` and its `/end_user/*` aliases: LiteLLM's end users, whose budgets and
limits bind every model request naming them (`trigate.end_users`).

A customer's limits live in a budget (`/budget/*`): `/customer/new` with budget fields
makes one for it, as LiteLLM does, and `budget_id` links it to an existing one.
`allowed_model_region` is refused: trigate does not route by region, and a data
residency rule it did not honour would fail open. Every route needs the master key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import admin_body, iso, query_arg, require_master
from trigate.api.budgets import (
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
from trigate.errors import InvalidRequest, NotFound
from trigate.gateway import Gateway
from trigate.store import CUSTOMERS, Row


class CustomerFields(BudgetLimits):
    alias: str | None = None
    blocked: bool | None = None
    budget_id: str | None = None
    allowed_model_region: Literal["eu", "us"] | None = None
    default_model: str | None = None
    metadata: dict[str, Any] | None = None
    object_permission: dict[str, Any] | None = None

    @field_validator("allowed_model_region")
    @classmethod
    def _no_regions(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "trigate does not route by region, so it cannot keep a customer's requests "
                "in one; leave it unset"
            )
        return value

    @field_validator("object_permission")
    @classmethod
    def _no_object_permissions(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and any(value.values()):
            raise ValueError("trigate serves no MCP servers, vector stores or agents to permit")
        return value


class NewCustomer(CustomerFields):
    user_id: str = Field(min_length=1)
    spend: float | None = Field(default=None, ge=0)


class UpdateCustomer(CustomerFields):
    user_id: str = Field(min_length=1)


class CustomerIds(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_ids: list[str] = Field(min_length=1)


def _missing(user_id: str, param: str = "end_user_id") -> NotFound:
    # LiteLLM's words and status for an unknown customer.
    return NotFound(
        f"End User Id={user_id} does not exist in db", param=param, code="end_user_not_found"
    )


def register(app: QuartTrio, gateway: Gateway) -> None:
    def both(path: str, method: str = "POST") -> Callable[[Any], Any]:
        """The route under `/customer/...` and LiteLLM's older `/end_user/...` alias."""

        def add(handler: Any) -> Any:
            app.route(f"/customer/{path}", methods=[method])(handler)
            app.route(f"/end_user/{path}", methods=[method], endpoint=f"end_user_{path}")(handler)
            return handler

        return add

    @both("new")
    async def new_customer() -> Response:
        body = await admin_body(gateway, NewCustomer)
        _check_default_model(gateway, body.default_model)
        if await gateway.store.get(CUSTOMERS.kind, body.user_id) is not None:
            raise InvalidRequest(
                f"Customer already exists, passed user_id={body.user_id}. Please pass a new "
                "user_id.",
                param="user_id",
            )
        row = await _budget_link(gateway, body, None)
        now = wall_time()
        row |= {
            "user_id": body.user_id,
            "alias": body.alias,
            "blocked": bool(body.blocked),
            "default_model": body.default_model,
            "metadata": body.metadata or {},
            "spend": body.spend or 0.0,
            "models": [],
            "created_at": now,
            "updated_at": now,
        }
        await gateway.store.insert(CUSTOMERS.kind, row)
        return json_response(await _shape(gateway, row))

    @both("info", "GET")
    async def customer_info() -> Response:
        await require_master(gateway)
        user_id = query_arg("end_user_id")
        if user_id is None:
            raise InvalidRequest("Pass `?end_user_id=`.", param="end_user_id")
        row = await gateway.store.get(CUSTOMERS.kind, user_id)
        if row is None:
            raise _missing(user_id)
        return json_response(await _shape(gateway, row))

    @both("update")
    async def update_customer() -> Response:
        body = await admin_body(gateway, UpdateCustomer)
        _check_default_model(gateway, body.default_model)
        current = await gateway.store.get(CUSTOMERS.kind, body.user_id)
        if current is None:
            raise _missing(body.user_id, "user_id")
        fields = await _budget_link(gateway, body, current)
        for name in ("alias", "blocked", "default_model", "metadata"):
            value = getattr(body, name)
            if value is not None:
                fields[name] = value
        fields["updated_at"] = wall_time()
        if not await gateway.store.update(CUSTOMERS.kind, body.user_id, fields):
            raise _missing(body.user_id, "user_id")
        row = await gateway.store.get(CUSTOMERS.kind, body.user_id)
        if row is None:  # deleted since
            raise _missing(body.user_id, "user_id")
        return json_response(await _shape(gateway, row))

    @both("delete")
    async def delete_customers() -> Response:
        body = await admin_body(gateway, CustomerIds)
        missing = [
            user_id
            for user_id in body.user_ids
            if await gateway.store.get(CUSTOMERS.kind, user_id) is None
        ]
        if missing:
            raise NotFound(
                f"End User Id(s)={', '.join(missing)} do not exist in db",
                param="user_ids",
                code="end_user_not_found",
            )
        deleted = await gateway.store.delete(CUSTOMERS.kind, "user_id", body.user_ids)
        return json_response(
            {
                "deleted_customers": deleted,
                "message": f"Successfully deleted customers with ids: {body.user_ids}",
            }
        )

    @both("list", "GET")
    async def list_customers() -> Response:
        await require_master(gateway)
        rows = await gateway.store.select(CUSTOMERS.kind, {}, limit=100_000)
        return json_response([await _shape(gateway, row) for row in rows])

    @both("block")
    async def block_customers() -> Response:
        body = await admin_body(gateway, CustomerIds)
        return json_response({"blocked_users": await _set_blocked(gateway, body.user_ids, True)})

    @both("unblock")
    async def unblock_customers() -> Response:
        body = await admin_body(gateway, CustomerIds)
        return json_response({"unblocked_users": await _set_blocked(gateway, body.user_ids, False)})


async def _set_blocked(gateway: Gateway, user_ids: list[str], blocked: bool) -> list[Row]:
    """Block (or unblock) customers; blocking one not yet configured makes it, as
    LiteLLM's upsert does, so that a block never waits for the customer to exist."""
    rows = []
    for user_id in dict.fromkeys(user_ids):
        now = wall_time()
        if not await gateway.store.update(
            CUSTOMERS.kind, user_id, {"blocked": blocked, "updated_at": now}
        ):
            if not blocked:
                raise _missing(user_id, "user_ids")
            await gateway.store.insert(
                CUSTOMERS.kind,
                {"user_id": user_id, "blocked": True, "models": [], "metadata": {},
                 "created_at": now, "updated_at": now},
            )  # fmt: skip
        row = await gateway.store.get(CUSTOMERS.kind, user_id)
        if row is not None:
            rows.append(await _shape(gateway, row))
    return rows


async def _budget_link(gateway: Gateway, body: CustomerFields, current: Row | None) -> Row:
    """The budget fields of a create or update, as LiteLLM treats them: budget fields
    change the customer's budget (made for it when it has none), `budget_id` links it to
    another; both at once are ambiguous."""
    limits = limit_values(body)
    if body.budget_id is not None:
        return {
            "budget_id": body.budget_id,
            **linked_limits(await linked_budget(gateway, body.budget_id, limits)),
        }
    if not limits:
        return {} if current is not None else {"budget_id": None}
    if current is not None and current.get("budget_id"):
        # The store writes the new limits to every customer linked to the budget.
        await change_budget(gateway, current["budget_id"], limits)
        return {}
    budget = await create_budget(gateway, limits)
    return {"budget_id": budget["budget_id"], **linked_limits(budget)}


def _check_default_model(gateway: Gateway, model: str | None) -> None:
    if model is not None and not gateway.groups.knows(model):
        raise InvalidRequest(
            f"Default Model not on proxy: default_model={model}.",
            param="default_model",
            status=422,
        )


async def _shape(gateway: Gateway, row: Row) -> Row:
    """A customer as LiteLLM's `LiteLLM_EndUserTable` shows it, with its budget."""
    return {
        "user_id": row["user_id"],
        "alias": row.get("alias"),
        "spend": row.get("spend", 0.0),
        "blocked": row.get("blocked", False),
        "allowed_model_region": row.get("allowed_model_region"),
        "default_model": row.get("default_model"),
        "budget_id": row.get("budget_id"),
        "metadata": row.get("metadata") or {},
        "litellm_budget_table": await budget_of(gateway, row.get("budget_id")),
        "object_permission_id": None,
        "budget_reset_at": iso(row.get("budget_reset_at")),
        "created_at": iso(row.get("created_at")),
        "updated_at": iso(row.get("updated_at")),
    }
