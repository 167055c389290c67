"""End users (LiteLLM's customers): `/customer/*` and `/end_user/*` over HTTP, and their
budgets, rate limits and `blocked` binding every model request that names them, on every
model route, streamed or not, across two gateway instances sharing Redis and a
database. LiteLLM's own tracker lets such requests through (its issues #11083, #24675)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from asgi_driver import harness
from helpers import MASTER_KEY, RunningGateway, pass_time, start_gateway

from trigate.end_users import RECHECK, end_user_of
from trigate.errors import InvalidRequest
from trigate.store import SpendFilter

MESSAGES = [{"role": "user", "content": "hi"}]
# A tenth of a cent a token: one answer costs cents, far past a budget of 0.001.
PRICED = {"input_cost_per_token": 1e-3, "output_cost_per_token": 1e-3}
# Not a test of an outage: Redis answers within the tests' own bounds, so that a loaded
# machine's stall (a full garbage collection took 2.3 s) never passes for a lost Redis
# and sends an instance to its local shares.
REDIS_TIMEOUT = 30.0


def config(database_url: str = "sqlite://:memory:", **router: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "mock", "litellm_params": {"model": "mock/gpt-4o", **PRICED}}
        ],
        "router_settings": {"num_retries": 0, **router},
        "general_settings": {"database_url": database_url},
    }


async def call(
    gateway: RunningGateway,
    path: str,
    body: dict[str, Any] | None = None,
    key: str = MASTER_KEY,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    async with gateway.client(key, timeout=30) as client:
        return await client.request(method, path, json=body, headers=headers)


async def ok(gateway: RunningGateway, path: str, body: dict[str, Any] | None = None) -> Any:
    reply = await call(gateway, path, body, method="POST" if body is not None else "GET")
    assert reply.status_code == 200, reply.text
    return reply.json()


# Every model route, each with the end user where its clients put it.
def model_requests(user: str) -> list[tuple[str, dict[str, Any]]]:
    chat = {"model": "mock", "messages": MESSAGES, "user": user}
    completion = {"model": "mock", "prompt": "hi", "user": user}
    response = {"model": "mock", "input": "hi", "user": user}
    message = {
        "model": "mock",
        "max_tokens": 20,
        "messages": MESSAGES,
        "metadata": {"user_id": user},
    }
    return [
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/completions", completion),
        ("/v1/completions", {**completion, "stream": True}),
        ("/v1/embeddings", {"model": "mock", "input": "hi", "user": user}),
        ("/v1/responses", response),
        ("/v1/responses", {**response, "stream": True}),
        ("/v1/messages", message),
        ("/v1/messages", {**message, "stream": True}),
    ]


async def spend_it(gateway: RunningGateway, user: str) -> None:
    """One request that costs more than the customer's whole budget."""
    reply = await call(
        gateway, "/v1/chat/completions", {"model": "mock", "messages": MESSAGES, "user": user}
    )
    assert reply.status_code == 200, reply.text


def refused_for_budget(reply: httpx.Response, path: str) -> bool:
    if reply.status_code != 400:
        return False
    error = reply.json()["error"]
    kind: str = error["type"]
    message: str = error["message"]
    if path == "/v1/messages":  # Anthropic's envelope
        return kind == "invalid_request_error" and "End User=u1 over budget" in message
    return kind == "budget_exceeded" and message.startswith(
        "ExceededBudget: End User=u1 over budget."
    )


async def test_a_customers_budget_binds_every_model_route_across_instances(
    nursery: trio.Nursery, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Spent on one instance, a customer's budget refuses it on both, on every model route,
    streamed or not, whoever's key calls; other end users are not touched."""
    fleet = {
        "redis_url": redis_url,
        "redis_key_prefix": redis_prefix,
        "redis_timeout": REDIS_TIMEOUT,
    }
    a = await start_gateway(nursery, config(database_url, **fleet))
    b = await start_gateway(nursery, config(database_url, **fleet))
    created = await ok(a, "/customer/new", {"user_id": "u1", "max_budget": 0.001})
    assert created["litellm_budget_table"]["max_budget"] == 0.001
    key = (await ok(a, "/key/generate", {}))["key"]
    await spend_it(a, "u1")
    for gateway in (a, b):
        for path, body in model_requests("u1"):
            for caller in (MASTER_KEY, key):
                reply = await call(gateway, path, body, caller)
                assert refused_for_budget(reply, path), (path, body, reply.text)
        by_header = await call(
            gateway,
            "/v1/chat/completions",
            {"model": "mock", "messages": MESSAGES},
            key,
            headers={"x-litellm-end-user-id": "u1"},
        )
        assert refused_for_budget(by_header, "/v1/chat/completions"), by_header.text
        for path, body in model_requests("someone-else"):
            assert (await call(gateway, path, body, key)).status_code == 200, path
    # The spend is the customer's, in the spend log and on its row.
    assert await a.gateway.ledger.flush()
    rows = await a.gateway.store.spend_logs(SpendFilter())
    assert {row["end_user"] for row in rows} >= {"u1", "someone-else"}
    info = await ok(b, "/customer/info?end_user_id=u1")
    assert info["spend"] > 0.001


@pytest.fixture
def slowed_clock() -> trio.testing.MockClock:
    """Time at a tenth of the wall clock's pace: a test's deadline of a few seconds, set
    against a few seconds of the code's own, stands for ten times as long on a machine
    too loaded to keep up, while still proving what it proves in the code's seconds."""
    return trio.testing.MockClock(rate=0.1)


async def test_the_first_customer_binds_the_other_instance_at_once(
    nursery: trio.Nursery,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Any,
    slowed_clock: trio.testing.MockClock,
) -> None:
    """An instance that has found no customer configured believes it for `RECHECK`
    seconds; a customer made on another instance reaches it over Redis long before.
    (Virtual seconds, `slowed_clock`'s: the wait below is RECHECK - 2 of them, 30 s of
    a loaded machine's real time.)"""
    fleet = {
        "redis_url": redis_url,
        "redis_key_prefix": redis_prefix,
        "redis_timeout": REDIS_TIMEOUT,
    }
    database = f"sqlite:///{tmp_path}/fleet.db"
    a = await start_gateway(nursery, config(database, **fleet))
    b = await start_gateway(nursery, config(database, **fleet))
    chat = {"model": "mock", "messages": MESSAGES, "user": "late"}
    assert (await call(b, "/v1/chat/completions", chat)).status_code == 200  # none configured
    await ok(a, "/customer/block", {"user_ids": ["late"]})
    with trio.fail_after(RECHECK - 2):
        while (await call(b, "/v1/chat/completions", chat)).status_code == 200:
            pass
    refused = await call(b, "/v1/chat/completions", chat)
    assert refused.json()["error"]["code"] == "end_user_blocked"


async def test_a_customers_rate_limit_and_block(
    nursery: trio.Nursery, still_clock: trio.testing.MockClock
) -> None:
    # rpm windows are the wall clock's minutes: with time standing still, the three
    # requests cannot straddle two windows, as they could on a loaded machine near a
    # minute's end (and be answered 200, 200, 200).
    gateway = await start_gateway(nursery, config())
    await ok(gateway, "/customer/new", {"user_id": "u2", "rpm_limit": 2})
    chat = {"model": "mock", "messages": MESSAGES, "user": "u2"}
    statuses = [(await call(gateway, "/v1/chat/completions", chat)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]

    blocked = await ok(gateway, "/customer/block", {"user_ids": ["u3"]})
    assert blocked["blocked_users"][0]["blocked"] is True  # made, blocked, as LiteLLM upserts
    refused = await call(gateway, "/v1/chat/completions", {**chat, "user": "u3"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "end_user_blocked"
    assert "User blocked from making LLM API Calls. User=u3" in refused.json()["error"]["message"]
    await ok(gateway, "/end_user/unblock", {"user_ids": ["u3"]})
    assert (await call(gateway, "/v1/chat/completions", {**chat, "user": "u3"})).status_code == 200


async def test_customer_routes_speak_litellms_shapes(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    made = await ok(
        gateway,
        "/customer/new",
        {
            "user_id": "c1",
            "alias": "Acme",
            "max_budget": 5,
            "budget_duration": "30d",
            "default_model": "mock",
            "metadata": {"plan": "pro"},
        },
    )
    assert made["user_id"] == "c1" and made["alias"] == "Acme" and made["blocked"] is False
    assert made["spend"] == 0 and made["default_model"] == "mock"
    budget = made["litellm_budget_table"]
    assert budget["budget_id"] == made["budget_id"] and budget["budget_duration"] == "30d"
    again = await call(gateway, "/customer/new", {"user_id": "c1"})
    assert (
        again.status_code == 400 and "Customer already exists" in again.json()["error"]["message"]
    )

    info = await ok(gateway, "/end_user/info?end_user_id=c1")
    assert info["litellm_budget_table"]["max_budget"] == 5
    # Budget fields change the customer's budget; `budget_id` links another.
    updated = await ok(gateway, "/customer/update", {"user_id": "c1", "max_budget": 7})
    assert updated["litellm_budget_table"]["max_budget"] == 7
    assert updated["budget_id"] == made["budget_id"]
    other = await ok(gateway, "/budget/new", {"budget_id": "free", "max_budget": 1})
    linked = await ok(gateway, "/end_user/update", {"user_id": "c1", "budget_id": "free"})
    assert linked["budget_id"] == "free" and linked["litellm_budget_table"] == other
    assert [c["user_id"] for c in await ok(gateway, "/customer/list")] == ["c1"]

    missing = await call(gateway, "/customer/info?end_user_id=nobody", method="GET")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "End User Id=nobody does not exist in db"
    for refused, field in (
        ({"user_id": "c2", "allowed_model_region": "eu"}, "allowed_model_region"),
        ({"user_id": "c2", "model_max_budget": {"mock": {"max_budget": 1}}}, "model_max_budget"),
        ({"user_id": "c2", "default_model": "no-such-model"}, "default_model"),
        ({"user_id": "c2", "budget_id": "free", "max_budget": 3}, "budget_id"),
    ):
        reply = await call(gateway, "/customer/new", refused)
        assert reply.status_code in (400, 422), reply.text
        assert reply.json()["error"]["param"] == field, reply.text

    gone = await call(gateway, "/customer/delete", {"user_ids": ["c1", "nobody"]})
    assert gone.status_code == 404 and "nobody" in gone.json()["error"]["message"]
    deleted = await ok(gateway, "/customer/delete", {"user_ids": ["c1"]})
    assert deleted["deleted_customers"] == 1
    assert await ok(gateway, "/customer/list") == []
    stranger = (await ok(gateway, "/key/generate", {}))["key"]
    assert (await call(gateway, "/customer/list", key=stranger, method="GET")).status_code == 403


def test_the_end_user_is_read_where_litellm_reads_it() -> None:
    assert end_user_of({"user": "body"}, {"x-litellm-end-user-id": "header"}) == "header"
    both = {"x-litellm-customer-id": "customer", "x-litellm-end-user-id": "header"}
    assert end_user_of({}, both) == "customer"
    assert end_user_of({"user": "body", "metadata": {"user_id": "meta"}}, {}) == "body"
    assert (
        end_user_of({"litellm_metadata": {"user": "lm"}, "metadata": {"user_id": "m"}}, {}) == "lm"
    )
    assert end_user_of({"metadata": {"user_id": "anthropic"}}, {}) == "anthropic"
    assert end_user_of({"safety_identifier": "s"}, {}) == "s"
    assert end_user_of({"user": ""}, {}) is None
    assert end_user_of({}, {}) is None
    with pytest.raises(InvalidRequest):
        end_user_of({"user": 5}, {})


async def test_a_customers_budget_window_resets(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock
) -> None:
    """`budget_duration` windows a customer's spend, as it does a key's: LiteLLM's
    customers' spend only ever grows (its issue #24675)."""
    h = await harness(nursery, config(), {})
    made = await h.admin(
        "/customer/new", {"user_id": "w", "max_budget": 0.001, "budget_duration": "1h"}
    )
    assert made.status == 200, made.body
    assert (await h.chat("mock", user="w")).status == 200
    assert (await h.chat("mock", user="w")).status == 400
    await pass_time(virtual_clock, 3600)
    assert (await h.chat("mock", user="w")).status == 200, "a new window, a fresh budget"
    assert (await h.chat("mock", user="w")).status == 400
