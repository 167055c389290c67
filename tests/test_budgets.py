"""LiteLLM's budget table (`/budget/*`) over HTTP, a changed budget binding every customer
linked to it at once; and `/health/readiness/details` and `/routes` in LiteLLM's shapes."""

from __future__ import annotations

import httpx
import trio
from helpers import MASTER_KEY, start_gateway
from test_customers import MESSAGES, call, config, ok


async def test_budget_routes_speak_litellms_shapes(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    made = await ok(
        gateway,
        "/budget/new",
        {"budget_id": "pro", "max_budget": 9.5, "rpm_limit": 3, "budget_duration": "1d"},
    )
    assert made["budget_id"] == "pro" and made["max_budget"] == 9.5 and made["rpm_limit"] == 3
    assert made["budget_reset_at"] is not None and made["model_max_budget"] == {}
    fresh = await ok(gateway, "/budget/new", {"max_budget": 1})
    assert fresh["budget_id"] and fresh["budget_reset_at"] is None
    taken = await call(gateway, "/budget/new", {"budget_id": "pro"})
    assert taken.status_code == 400 and "already exists" in taken.json()["error"]["message"]
    per_model = await call(gateway, "/budget/new", {"model_max_budget": {"m": {"max_budget": 1}}})
    assert per_model.status_code == 400
    assert per_model.json()["error"]["param"] == "model_max_budget"

    assert (await ok(gateway, "/budget/update", {"budget_id": "pro", "tpm_limit": 100}))[
        "tpm_limit"
    ] == 100
    assert [b["budget_id"] for b in await ok(gateway, "/budget/info", {"budgets": ["pro"]})] == [
        "pro"
    ]
    assert {b["budget_id"] for b in await ok(gateway, "/budget/list")} == {
        "pro",
        fresh["budget_id"],
    }
    settings = await ok(gateway, "/budget/settings?budget_id=pro")
    values = {s["field_name"]: s["field_value"] for s in settings}
    assert values["max_budget"] == 9.5 and values["tpm_limit"] == 100
    assert {s["field_type"] for s in settings} == {"Integer", "String", "Float", "Object"}

    await ok(gateway, "/customer/new", {"user_id": "c", "budget_id": "pro"})
    in_use = await call(gateway, "/budget/delete", {"id": "pro"})
    assert in_use.status_code == 400, in_use.text
    assert (await ok(gateway, "/budget/delete", {"id": fresh["budget_id"]}))["max_budget"] == 1
    assert (await call(gateway, "/budget/delete", {"id": "nope"})).status_code == 404
    stranger = (await ok(gateway, "/key/generate", {}))["key"]
    assert (await call(gateway, "/budget/list", key=stranger, method="GET")).status_code == 403


async def test_a_changed_budget_binds_its_customers_at_once(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    await ok(gateway, "/budget/new", {"budget_id": "free", "max_budget": 0})
    for user in ("a", "b"):
        await ok(gateway, "/customer/new", {"user_id": user, "budget_id": "free"})
    chat = {"model": "mock", "messages": MESSAGES}
    for user in ("a", "b"):
        refused = await call(gateway, "/v1/chat/completions", {**chat, "user": user})
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "budget_exceeded"
    await ok(gateway, "/budget/update", {"budget_id": "free", "max_budget": 100})
    for user in ("a", "b"):
        assert (
            await call(gateway, "/v1/chat/completions", {**chat, "user": user})
        ).status_code == 200
    await ok(gateway, "/budget/update", {"budget_id": "free", "rpm_limit": 0})
    assert (await call(gateway, "/v1/chat/completions", {**chat, "user": "a"})).status_code == 429


async def test_readiness_details_and_routes(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        assert (await anonymous.get("/health/readiness/details")).status_code == 401
        listed = (await anonymous.get("/routes")).json()["routes"]
    details = await call(gateway, "/health/readiness/details", method="GET")
    assert details.status_code == 200, details.text
    body = details.json()
    assert body["status"] == "healthy" and body["db"] == "connected" and body["cache"] is None
    assert body["litellm_version"] and body["success_callbacks"] == []

    paths = {route["path"]: route["methods"] for route in listed}
    assert paths["/v1/chat/completions"] == ["POST"]
    assert paths["/customer/new"] == ["POST"] and paths["/end_user/info"] == ["GET"]
    assert paths["/organization/update"] == ["PATCH", "POST"]
    assert "/health/readiness/details" in paths and "/routes" in paths
    assert MASTER_KEY not in str(listed)
