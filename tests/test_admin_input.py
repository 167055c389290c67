"""Admin routes and /health against odd input and virtual keys: 4xx, never 500, and
nothing a virtual key should not see."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
import pytest
import trio
from asgi_driver import Harness, chat_request, harness
from fakes import FakeUpstream
from helpers import mock_config, openai_config, start_gateway
from scripted import Step, deployment


async def gateway(nursery: trio.Nursery) -> Harness:
    config = {"model_list": [deployment("d0", "a"), deployment("d1", "b")]}
    return await harness(nursery, config, {"d0": [Step()], "d1": [Step()]})


async def get(h: Harness, path: str, key: str) -> tuple[int, dict[str, Any]]:
    exchange = chat_request(h.nursery, h.app, None, path=path, method="GET", key=key)
    status = (await exchange.start())["status"]
    return status, orjson.loads(await exchange.read_body())


async def test_a_virtual_key_sees_only_its_models_health_and_no_api_base(
    nursery: trio.Nursery,
) -> None:
    h = await gateway(nursery)
    key = (await h.admin("/key/generate", {"models": ["a"]})).json["key"]
    status, report = await get(h, "/health", key)
    assert status == 200
    [entry] = report["healthy_endpoints"]
    assert entry["model_group"] == "a" and "api_base" not in entry
    assert "d1.test" not in str(report) and report["healthy_count"] == 1


async def test_the_master_key_sees_every_deployment_and_where_it_is(
    nursery: trio.Nursery,
) -> None:
    h = await gateway(nursery)
    report = (await h.admin("/health")).json
    assert {e["api_base"] for e in report["healthy_endpoints"]} == {
        "http://d0.test/v1",
        "http://d1.test/v1",
    }


@pytest.mark.parametrize("limit", ["9" * 5000, "10001", "0", "-1", "1e3", "²", "9" * 20])
async def test_spend_logs_limit_out_of_range_is_a_400(nursery: trio.Nursery, limit: str) -> None:
    h = await gateway(nursery)
    reply = await h.admin(f"/spend/logs?limit={limit}")
    assert reply.status == 400 and reply.json["error"]["param"] == "limit"


async def test_spend_logs_limit_in_range(nursery: trio.Nursery) -> None:
    h = await gateway(nursery)
    assert (await h.admin("/spend/logs?limit=00010")).status == 200


@pytest.mark.parametrize("path", ["/team/new", "/user/new", "/key/generate"])
@pytest.mark.parametrize("field", ["blocked", "models", "metadata"])
async def test_null_for_an_always_set_field_means_not_given(
    nursery: trio.Nursery, path: str, field: str
) -> None:
    h = await gateway(nursery)
    reply = await h.admin(path, {field: None})
    assert reply.status == 200, reply.body
    assert reply.json.get("blocked") in (False, 0, None)


async def test_null_in_an_update_changes_nothing(nursery: trio.Nursery) -> None:
    h = await gateway(nursery)
    await h.admin("/team/new", {"team_id": "t", "models": ["a"], "blocked": True})
    reply = await h.admin("/team/update", {"team_id": "t", "models": None, "blocked": None})
    assert reply.status == 200
    info = reply.json["data"]
    assert info["models"] == ["a"] and info["blocked"]


# --- text with a NUL: PostgreSQL's text holds none ---------------------------------------

NUL_IN_ADMIN_TEXT = [
    ("POST", "/key/generate", {"key_alias": "a\x00b"}, "key_alias"),
    ("POST", "/key/update", {"key": "sk-\x00"}, "key"),
    ("POST", "/team/new", {"team_alias": "a\x00b"}, "team_alias"),
    ("POST", "/user/new", {"user_id": "u\x00"}, "user_id"),
    ("POST", "/user/update", {"user_id": "u", "user_email": "a\x00@b"}, "user_email"),
    ("POST", "/customer/new", {"user_id": "c\x00"}, "user_id"),
    ("POST", "/budget/new", {"budget_id": "b\x00"}, "budget_id"),
    ("POST", "/organization/new", {"organization_alias": "o\x00"}, "organization_alias"),
    ("GET", "/key/list?key_alias=a%00b", None, "key_alias"),
    ("GET", "/key/info?key=%00", None, "key"),
    ("GET", "/spend/logs?team_id=%00", None, "team_id"),
    ("GET", "/v1/files?after=%00", None, "after"),
    ("GET", "/v1/responses/resp_a%00b", None, "response_id"),
]


async def test_a_nul_in_admin_text_is_a_400_naming_the_field(
    nursery: trio.Nursery, database_url: str
) -> None:
    """On PostgreSQL each was a 500 (its text holds no NUL); on every database it is the
    client's 400, naming the field, and the gateway serves on."""
    running = await start_gateway(nursery, {**mock_config(), "general_settings": {
        "database_url": database_url}})  # fmt: skip
    async with running.client() as client:
        for method, path, body, field in NUL_IN_ADMIN_TEXT:
            reply = await client.request(method, path, json=body)
            assert reply.status_code == 400, (path, body, reply.text)
            error = reply.json()["error"]
            assert error["param"] == field and "NUL" in error["message"], (path, error)
        reply = await client.post("/key/generate", json={"key_alias": "fine"})
        assert reply.status_code == 200, reply.text
    await running.stop()


async def test_model_routes_look_up_a_nul_as_matching_nothing(
    nursery: trio.Nursery, database_url: str
) -> None:
    """An end user or a `previous_response_id` with a NUL names no stored row: with
    customers configured the request is served, and the response is not found, where
    PostgreSQL refused the lookup (a 500)."""
    running = await start_gateway(nursery, {**mock_config(), "general_settings": {
        "database_url": database_url}})  # fmt: skip
    chat = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    async with running.client() as client:
        assert (await client.post("/customer/new", json={"user_id": "c1"})).status_code == 200
        reply = await client.post("/v1/chat/completions", json={**chat, "user": "c\x00"})
        assert reply.status_code == 200, reply.text
        follow_up = {"model": "mock", "input": "hi", "previous_response_id": "resp_\x00"}
        for path in ("/v1/responses", "/v1/responses/input_tokens"):
            reply = await client.post(path, json=follow_up)
            assert reply.status_code == 404, (path, reply.text)
            assert reply.json()["error"]["param"] == "previous_response_id"
    await running.stop()


async def test_a_pass_through_model_with_a_nul_is_recorded_and_spend_goes_on(
    nursery: trio.Nursery, upstream: FakeUpstream, database_url: str
) -> None:
    """A pass-through call's spend row names the model its body names: one with a NUL
    failed the ledger's batch on PostgreSQL at every retry, and no spend was recorded
    again. The NUL is stored as U+FFFD, as the ledger keeps every text a client names."""
    config = {**openai_config(upstream), "general_settings": {"database_url": database_url}}
    running = await start_gateway(nursery, config)
    async with running.client() as client:
        body = {"model": "upstream-model\x00", "messages": [{"role": "user", "content": "hi"}]}
        reply = await client.post("/openai/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
    await running.records.wait_for(1)
    assert await running.gateway.ledger.flush()
    await running.stop()


async def test_a_value_the_database_refuses_is_the_clients_400(
    nursery: trio.Nursery, postgres_url: str
) -> None:
    """An alias past PostgreSQL's index entry limit (2,704 bytes; random text, which its
    compression cannot shrink under it) is refused at every try: the client's to change,
    a 400, where it was a 500 (and before that a 503, an outage to retry for ever)."""
    running = await start_gateway(nursery, {**mock_config(), "general_settings": {
        "database_url": postgres_url}})  # fmt: skip
    async with running.client() as client:
        reply = await client.post("/key/generate", json={"key_alias": secrets.token_hex(3000)})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error" and "54000" in error["message"]
        reply = await client.post("/key/generate", json={"key_alias": "fine"})
        assert reply.status_code == 200, reply.text
    await running.stop()
