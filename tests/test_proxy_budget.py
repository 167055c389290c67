"""LiteLLM's global proxy budget (`litellm_settings.max_budget`, `budget_duration`): the
`litellm-proxy-budget` user every request's cost is added to, which LiteLLM's
`tests/test_users.py::test_global_proxy_budget_update` reads, and the budget refusing
every request, the master key's too, once spent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from helpers import MASTER_KEY, RunningGateway, build_app, mock_config, start_gateway
from test_fleet_processes import CHAT as FLEET_CHAT
from test_fleet_processes import call, new_key, start_instance, stop_all, write_config

from trigate.config import ConfigError

PRICED = {"input_cost_per_token": 1.0, "output_cost_per_token": 0.0}
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


def config(**settings: Any) -> dict[str, Any]:
    return {**mock_config(**PRICED), "litellm_settings": settings}


async def chat(gateway: RunningGateway, key: str = MASTER_KEY, **extra: Any) -> Any:
    async with gateway.client(key) as client:
        return await client.post("/v1/chat/completions", json={**CHAT, **extra})


async def proxy_user(gateway: RunningGateway) -> Any:
    async with gateway.client() as client:
        return await client.get("/user/info?user_id=litellm-proxy-budget")


async def test_every_request_spends_the_proxy_budget_until_refused(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config(max_budget=30.0, budget_duration="30d"))
    info = (await proxy_user(gateway)).json()["user_info"]
    assert info["max_budget"] == 30.0 and info["spend"] == 0.0
    assert info["budget_duration"] == "30d"
    assert info["budget_reset_at"] is not None
    # The master key's request spends it (LiteLLM's test), streamed or not.
    assert (await chat(gateway)).status_code == 200
    await gateway.gateway.ledger.flush()
    first = (await proxy_user(gateway)).json()["user_info"]["spend"]
    assert first > 0
    assert (await chat(gateway, stream=True)).status_code == 200
    await gateway.gateway.ledger.flush()
    assert (await proxy_user(gateway)).json()["user_info"]["spend"] > first
    # A virtual key's too, and once the budget is spent every caller is refused.
    async with gateway.client() as client:
        key = (await client.post("/key/generate", json={})).json()["key"]
    statuses = [(await chat(gateway, key)).status_code for _ in range(30)]
    assert 200 in statuses and statuses[-1] == 400
    refused = await chat(gateway)
    assert refused.status_code == 400
    assert "Budget has been exceeded" in refused.json()["error"]["message"]
    assert "proxy" in refused.json()["error"]["message"]


async def test_a_restart_keeps_the_spend_and_takes_the_new_budget(
    nursery: trio.Nursery, database_url: str
) -> None:
    settings = {"database_url": database_url}
    first = await start_gateway(
        nursery, {**config(max_budget=1000.0), "general_settings": settings}
    )
    assert (await chat(first)).status_code == 200
    await first.stop()
    again = await start_gateway(
        nursery, {**config(max_budget=2000.0), "general_settings": settings}
    )
    info = (await proxy_user(again)).json()["user_info"]
    assert info["max_budget"] == 2000.0 and info["spend"] > 0


async def test_without_a_proxy_budget_there_is_no_proxy_user(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    assert (await proxy_user(gateway)).status_code == 404
    assert (await chat(gateway)).status_code == 200


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_budget": "lots"}, "max_budget"),
        ({"max_budget": -1}, "max_budget"),
        ({"max_budget": 5, "budget_duration": "soon"}, "budget_duration"),
        ({"budget_duration": "30d"}, "budget_duration"),
    ],
)
def test_a_bad_proxy_budget_stops_start_up(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        build_app(config(**settings))


async def test_two_instances_share_the_proxy_budget(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Two instances of two workers each, one Redis and one database, both making the
    proxy budget's user at start: the budget spent through one refuses the other's
    requests, the master key's included."""
    config = write_config(tmp_path, redis_prefix)
    config.write_text(config.read_text() + "litellm_settings: {max_budget: 100.0}\n")
    database = tmp_path / "fleet.db"
    a, b = [await start_instance(config, database, redis_url) for _ in range(2)]
    try:
        key = await new_key(a)
        long = {**FLEET_CHAT, "messages": [{"role": "user", "content": "word " * 300}]}
        assert (await call(b, "/v1/chat/completions", long, key)).status_code == 200
        for instance in (a, b, a, b):
            spent = await call(instance, "/v1/chat/completions", FLEET_CHAT)
            assert spent.status_code == 400, spent.text
            assert "Budget has been exceeded" in spent.json()["error"]["message"]
    finally:
        await stop_all([a, b])


async def test_a_reload_that_changes_the_proxy_budget_is_warned_of(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    models = "model_list:\n  - model_name: mock\n    litellm_params: {model: mock/gpt-4o}\n"
    path.write_text(models + "litellm_settings: {max_budget: 10}\n")
    raw = yaml.safe_load(path.read_text())
    gateway = await start_gateway(nursery, raw, config_path=str(path))

    async def reload() -> list[str]:
        caplog.clear()
        async with gateway.client() as admin:
            assert (await admin.post("/config/reload")).status_code == 200
        return [r.getMessage() for r in caplog.records if "proxy budget" in r.getMessage()]

    assert await reload() == []  # unchanged
    path.write_text(models + "litellm_settings: {max_budget: 20}\n")
    assert await reload() == [
        "config reload: litellm_settings.max_budget or budget_duration changed; "
        "the proxy budget changes at restart"
    ]
    assert (await proxy_user(gateway)).json()["user_info"]["max_budget"] == 10.0


async def test_deleting_the_proxy_budget_user_does_not_lift_the_budget(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, config(max_budget=1.0))
    async with gateway.client() as admin:
        deleted = await admin.post("/user/delete", json={"user_ids": ["litellm-proxy-budget"]})
    assert deleted.status_code == 200
    assert (await proxy_user(gateway)).status_code == 404
    assert (await chat(gateway)).status_code == 200  # nothing spent yet: it costs more than 1
    refused = await chat(gateway)
    assert refused.status_code == 400
    assert "Budget has been exceeded" in refused.json()["error"]["message"]
