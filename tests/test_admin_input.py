"""Admin routes and /health against odd input and virtual keys: 4xx, never 500, and
nothing a virtual key should not see."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
from asgi_driver import Harness, chat_request, harness
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
