"""`/budget/*`: LiteLLM's budget table, and how customers and organizations link to it.

A budget holds limits (`max_budget`, `budget_duration`, rpm, tpm, parallel requests)
and no spend: the customers and organizations linked to it by `budget_id` each spend
against their own copy of its limits, which the store writes in the same transaction as
the budget (`Store.update_budget`), so that a changed budget binds every linked owner
at once, on every worker. Per-model budgets (`model_max_budget`) are refused rather than
kept and not enforced. Every route needs the master key.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from quart import Response
from quart_trio import QuartTrio

from trigate.api.admin import Duration, admin_body, iso, not_found, query_arg, require_master
from trigate.api.jsonio import json_response
from trigate.clock import wall_time
from trigate.durations import parse_duration
from trigate.errors import InvalidRequest
from trigate.gateway import Gateway
from trigate.store import BUDGET_LIMITS, BUDGETED, BUDGETS, Row

# Who made a row, as LiteLLM records it: only the master key writes, LiteLLM's admin.
ADMIN_NAME = "default_user_id"


class BudgetLimits(BaseModel):
    """The fields of LiteLLM's `BudgetNewRequest`, shared by the routes that may create or
    change a budget (customers', organizations')."""

    model_config = ConfigDict(extra="ignore")

    max_budget: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    soft_budget: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_parallel_requests: int | None = Field(default=None, ge=0)
    tpm_limit: int | None = Field(default=None, ge=0)
    rpm_limit: int | None = Field(default=None, ge=0)
    budget_duration: Duration = None
    model_max_budget: dict[str, Any] | None = None
    budget_reset_at: datetime.datetime | None = None

    @field_validator("model_max_budget")
    @classmethod
    def _no_model_budgets(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError(
                "trigate keeps no per-model budgets; set `max_budget` (and a key or team "
                "limited to the model) instead"
            )
        return value


class NewBudget(BudgetLimits):
    budget_id: str | None = None


class NamedBudget(BudgetLimits):
    budget_id: str


class BudgetIds(BaseModel):
    model_config = ConfigDict(extra="ignore")

    budgets: list[str] = Field(min_length=1)


class DeleteBudget(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str


# `/budget/settings`: each configurable field, with its type as LiteLLM's UI reads it.
_SETTINGS = {
    "max_parallel_requests": ("Integer", "Max concurrent requests allowed for this budget id."),
    "tpm_limit": ("Integer", "Max tokens per minute, allowed for this budget id."),
    "rpm_limit": ("Integer", "Max requests per minute, allowed for this budget id."),
    "budget_duration": ("String", "Max duration budget should be set for (e.g. '1hr', '1d')."),
    "max_budget": ("Float", "Requests will fail if this budget (in USD) is exceeded."),
    "soft_budget": ("Float", "Requests will NOT fail if this is exceeded. Will fire alerting."),
    "model_max_budget": ("Object", "Max budget per model (refused: trigate keeps none)."),
}


def limit_values(body: BudgetLimits) -> Row:
    """The budget fields a request gave (a null is "not given", as LiteLLM reads it)."""
    fields: Row = {
        name: getattr(body, name)
        for name in (*BUDGET_LIMITS, "model_max_budget")
        if name in body.model_fields_set and getattr(body, name) is not None
    }
    if body.budget_reset_at is not None:
        fields["budget_reset_at"] = body.budget_reset_at.timestamp()
    elif "budget_duration" in fields:
        fields["budget_reset_at"] = wall_time() + parse_duration(fields["budget_duration"])
    return fields


def linked_limits(budget: Row) -> Row:
    """A budget's limits as a customer or organization newly linked to it carries them:
    its own budget window starts now."""
    copy = {name: budget.get(name) for name in BUDGET_LIMITS}
    duration = budget.get("budget_duration")
    copy["budget_reset_at"] = wall_time() + parse_duration(duration) if duration else None
    return copy


def no_budget() -> Row:
    """The limits an owner carries with no budget linked: none."""
    return {**dict.fromkeys(BUDGET_LIMITS), "budget_reset_at": None}


async def create_budget(gateway: Gateway, fields: Row, budget_id: str | None = None) -> Row:
    now = wall_time()
    row: Row = {
        "budget_id": budget_id or str(uuid.uuid4()),
        "model_max_budget": {},
        "created_by": ADMIN_NAME,
        "updated_by": ADMIN_NAME,
        "created_at": now,
        "updated_at": now,
        **fields,
    }
    if budget_id is not None and await gateway.store.get(BUDGETS.kind, budget_id) is not None:
        raise InvalidRequest(f"Budget with id '{budget_id}' already exists.", param="budget_id")
    await gateway.store.insert(BUDGETS.kind, row)
    return row


async def linked_budget(gateway: Gateway, budget_id: str, limits: Row) -> Row:
    """The budget a customer or organization is to be linked to: it must exist, and
    `limits`, the budget fields of the same request, must be none: which would be the
    owner's limits is ambiguous."""
    if limits:
        raise InvalidRequest(
            "Pass either `budget_id` or budget fields (`max_budget`, ...), not both.",
            param="budget_id",
        )
    budget = await gateway.store.get(BUDGETS.kind, budget_id)
    if budget is None:
        raise InvalidRequest(f"No budget `{budget_id}` exists.", param="budget_id")
    return budget


async def change_budget(gateway: Gateway, budget_id: str, fields: Row) -> Row:
    """Write `fields` to the budget and its limits to every owner linked to it."""
    current = await gateway.store.get(BUDGETS.kind, budget_id)
    if current is None:
        raise not_found("budget", budget_id)
    changed = {**current, **fields, "updated_at": wall_time(), "updated_by": ADMIN_NAME}
    written = {name: changed[name] for name in (*fields, "updated_at", "updated_by")}
    # Each linked owner keeps its own window, unless the window itself changed.
    copied = {name: changed.get(name) for name in BUDGET_LIMITS}
    if "budget_reset_at" in fields:
        copied["budget_reset_at"] = fields["budget_reset_at"]
    if not await gateway.store.update_budget(budget_id, written, copied):
        raise not_found("budget", budget_id)
    return changed


def budget_shape(row: Row | None) -> Row | None:
    """A budget as LiteLLM's `LiteLLM_BudgetTable` shows it."""
    if row is None:
        return None
    return {
        "budget_id": row["budget_id"],
        **{name: row.get(name) for name in BUDGET_LIMITS},
        "model_max_budget": row.get("model_max_budget") or {},
        "created_by": row.get("created_by"),
        "updated_by": row.get("updated_by"),
        "budget_reset_at": iso(row.get("budget_reset_at")),
        "created_at": iso(row.get("created_at")),
        "updated_at": iso(row.get("updated_at")),
    }


async def budget_of(gateway: Gateway, budget_id: str | None) -> Row | None:
    """The budget shown with a customer or organization (`litellm_budget_table`)."""
    if budget_id is None:
        return None
    return budget_shape(await gateway.store.get(BUDGETS.kind, budget_id))


def register(app: QuartTrio, gateway: Gateway) -> None:
    @app.post("/budget/new")
    async def new_budget() -> Response:
        body = await admin_body(gateway, NewBudget)
        return json_response(
            budget_shape(await create_budget(gateway, limit_values(body), body.budget_id))
        )

    @app.post("/budget/update")
    async def update_budget() -> Response:
        body = await admin_body(gateway, NamedBudget)
        return json_response(
            budget_shape(await change_budget(gateway, body.budget_id, limit_values(body)))
        )

    @app.post("/budget/info")
    async def budget_info() -> Response:
        body = await admin_body(gateway, BudgetIds)
        rows = [await gateway.store.get(BUDGETS.kind, budget_id) for budget_id in body.budgets]
        return json_response([budget_shape(row) for row in rows if row is not None])

    @app.get("/budget/list")
    async def list_budgets() -> Response:
        await require_master(gateway)
        rows = await gateway.store.select(BUDGETS.kind, {})
        return json_response([budget_shape(row) for row in rows])

    @app.get("/budget/settings")
    async def budget_settings() -> Response:
        await require_master(gateway)
        budget_id = query_arg("budget_id")
        if budget_id is None:
            raise InvalidRequest("Pass `?budget_id=`.", param="budget_id")
        row = await gateway.store.get(BUDGETS.kind, budget_id) or {}
        return json_response(
            [
                {
                    "field_name": name,
                    "field_type": kind,
                    "field_value": row.get(name),
                    "field_description": description,
                    "field_default_value": None,
                    "stored_in_db": True,
                }
                for name, (kind, description) in _SETTINGS.items()
            ]
        )

    @app.post("/budget/delete")
    async def delete_budget() -> Response:
        body = await admin_body(gateway, DeleteBudget)
        row = await gateway.store.get(BUDGETS.kind, body.id)
        if row is None:
            raise not_found("budget", body.id)
        for owner in BUDGETED:
            if await gateway.store.select(owner.kind, {"budget_id": body.id}, limit=1):
                # Unlinking them in silence would lift their limits.
                raise InvalidRequest(
                    f"Budget `{body.id}` is linked to {owner.kind}; link them to another "
                    "budget first.",
                    param="id",
                )
        await gateway.store.delete(BUDGETS.kind, "budget_id", [body.id])
        return json_response(budget_shape(row))
