"""LiteLLM's per-member team budgets (`max_budget_in_team` on `/team/member_add` and
`/team/member_update`, with the member's `tpm_limit`/`rpm_limit`): the spend of a user's
keys in a team is tracked on its membership and its budget refuses requests past it, as
LiteLLM's `tests/test_team.py::test_users_in_team_budget` expects. And `/team/new` run
concurrently naming one new member (its `test_team_new`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from helpers import MASTER_KEY, RunningGateway, mock_config, start_gateway
from test_fleet_processes import CHAT, call, start_instance, stop_all, write_config

# A dollar a prompt token: one short chat spends a few dollars.
PRICED = {"input_cost_per_token": 1.0, "output_cost_per_token": 0.0}


def priced(database_url: str = "sqlite://:memory:") -> dict[str, Any]:
    return {**mock_config(**PRICED), "general_settings": {"database_url": database_url}}


def chat(content: str = "hi") -> dict[str, Any]:
    return {"model": "mock", "messages": [{"role": "user", "content": content}]}


async def post(
    gateway: RunningGateway, path: str, body: dict[str, Any], key: str = MASTER_KEY
) -> httpx.Response:
    async with gateway.client(key) as client:
        return await client.post(path, json=body)


async def ok(gateway: RunningGateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await post(gateway, path, body)
    assert reply.status_code == 200, (path, reply.text)
    answer: dict[str, Any] = reply.json()
    return answer


async def user_info(gateway: RunningGateway, user_id: str) -> dict[str, Any]:
    async with gateway.client() as client:
        reply = await client.get(f"/user/info?user_id={user_id}")
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


async def test_litellm_users_in_team_budget_flow(nursery: trio.Nursery, database_url: str) -> None:
    """LiteLLM's flow: a user made in a team gets the team's key; a budget in the team
    set after lets one request through, tracks its spend on the membership, then
    refuses with LiteLLM's message; `/user/info` shows the membership's budget."""
    gateway = await start_gateway(nursery, priced(database_url))
    team = await ok(gateway, "/team/new", {"team_alias": "t"})
    made = await ok(
        gateway,
        "/user/new",
        {"user_id": "u1", "max_budget": 1000, "models": ["mock"], "team_id": team["team_id"]},
    )
    key = made["key"]
    updated = await ok(
        gateway,
        "/team/member_update",
        {"team_id": team["team_id"], "user_id": "u1", "max_budget_in_team": 0.0000001},
    )
    assert updated["max_budget_in_team"] == 0.0000001
    assert (await post(gateway, "/v1/chat/completions", chat(), key)).status_code == 200
    await gateway.gateway.ledger.flush()
    info = await user_info(gateway, "u1")
    [membership] = info["teams"][0]["team_memberships"]
    assert membership["spend"] >= 0.0000001
    assert membership["litellm_budget_table"]["max_budget"] == 0.0000001
    refused = await post(gateway, "/v1/chat/completions", chat(), key)
    assert refused.status_code == 400, refused.text
    assert "Budget has been exceeded" in refused.json()["error"]["message"]
    assert "team member" in refused.json()["error"]["message"]
    # The budget is the user's in this team only: the user's key outside it still works.
    own = await ok(gateway, "/key/generate", {"user_id": "u1"})
    assert (await post(gateway, "/v1/chat/completions", chat(), own["key"])).status_code == 200


async def test_member_add_with_budget_binds_the_members_keys(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, priced())
    team = (await ok(gateway, "/team/new", {"team_id": "t1"}))["team_id"]
    added = await ok(
        gateway,
        "/team/member_add",
        {"team_id": team, "member": {"user_id": "u2"}, "max_budget_in_team": 3.0},
    )
    [membership] = added["updated_team_memberships"]
    assert membership["litellm_budget_table"]["max_budget"] == 3.0
    key = (await ok(gateway, "/key/generate", {"team_id": team, "user_id": "u2"}))["key"]
    # The first request costs more than the budget: it is let in (nothing was spent), billed,
    # and the next is refused, before and after the ledger reaches the store.
    assert (await post(gateway, "/v1/chat/completions", chat("word " * 10), key)).status_code == 200
    assert (await post(gateway, "/v1/chat/completions", chat(), key)).status_code == 400
    await gateway.gateway.ledger.flush()
    assert (await post(gateway, "/v1/chat/completions", chat(), key)).status_code == 400
    # Another member of the team is not bound by u2's budget.
    await ok(gateway, "/team/member_add", {"team_id": team, "member": {"user_id": "u3"}})
    other = (await ok(gateway, "/key/generate", {"team_id": team, "user_id": "u3"}))["key"]
    assert (await post(gateway, "/v1/chat/completions", chat(), other)).status_code == 200
    # Raising the budget lets u2's requests through again at once.
    await ok(
        gateway,
        "/team/member_update",
        {"team_id": team, "user_id": "u2", "max_budget_in_team": 1000.0},
    )
    assert (await post(gateway, "/v1/chat/completions", chat(), key)).status_code == 200


async def test_member_rpm_limit(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, mock_config())
    team = (await ok(gateway, "/team/new", {"team_id": "t1"}))["team_id"]
    await ok(gateway, "/team/member_add", {"team_id": team, "member": {"user_id": "u"}})
    reply = await ok(
        gateway, "/team/member_update", {"team_id": team, "user_id": "u", "rpm_limit": 1}
    )
    assert reply["rpm_limit"] == 1
    key = (await ok(gateway, "/key/generate", {"team_id": team, "user_id": "u"}))["key"]
    statuses = [
        (await post(gateway, "/v1/chat/completions", chat(), key)).status_code for _ in range(2)
    ]
    # A minute boundary between the two may let both through; never two refusals.
    assert statuses[0] == 200 and statuses[1] in (200, 429)
    if statuses[1] == 200:
        assert (await post(gateway, "/v1/chat/completions", chat(), key)).status_code == 429


async def test_member_budget_refused_when_negative(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, mock_config())
    await ok(gateway, "/team/new", {"team_id": "t1", "members_with_roles": [{"user_id": "u"}]})
    reply = await post(
        gateway,
        "/team/member_update",
        {"team_id": "t1", "user_id": "u", "max_budget_in_team": -1},
    )
    assert reply.status_code == 400
    assert "max_budget_in_team" in reply.text


async def test_concurrent_team_new_naming_one_new_member(
    nursery: trio.Nursery, database_url: str
) -> None:
    """LiteLLM's `test_team_new`: ten `/team/new` at once, each naming the same user, whom
    none finds made: each makes it or finds it made, and every call succeeds."""
    gateway = await start_gateway(nursery, priced(database_url))
    statuses: list[int] = []

    async def one() -> None:
        body = {"team_alias": "t", "members_with_roles": [{"role": "user", "user_id": "same"}]}
        statuses.append((await post(gateway, "/team/new", body)).status_code)

    async with trio.open_nursery() as calls:
        for _ in range(10):
            calls.start_soon(one)
    assert statuses == [200] * 10
    assert len((await user_info(gateway, "same"))["teams"]) == 10


async def test_two_instances_share_a_member_budget(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Two instances of two workers each, one Redis and one database: a member's budget
    spent through one instance refuses the member's next request on the other."""
    config = write_config(tmp_path, redis_prefix)
    database = tmp_path / "fleet.db"
    a, b = [await start_instance(config, database, redis_url) for _ in range(2)]
    try:
        team = (await call(a, "/team/new", {"team_alias": "t"})).json()["team_id"]
        made = await call(a, "/user/new", {"user_id": "u", "team_id": team})
        key = made.json()["key"]
        for _ in range(4):  # B's workers cache the membership while it has no budget
            assert (await call(b, "/v1/chat/completions", CHAT, key)).status_code == 200
        update = {"team_id": team, "user_id": "u", "max_budget_in_team": 100.0}
        assert (await call(b, "/team/member_update", update)).status_code == 200
        long = {**CHAT, "messages": [{"role": "user", "content": "word " * 300}]}
        # The change reaches every worker of both instances within moments; a request it
        # has not reached yet spends unchecked, as a key's budget change does.
        with trio.fail_after(10):
            while (await call(a, "/v1/chat/completions", long, key)).status_code == 200:
                pass
        for instance in (a, b, a, b):
            spent = await call(instance, "/v1/chat/completions", CHAT, key)
            assert spent.status_code == 400, spent.text
            assert "Budget has been exceeded" in spent.json()["error"]["message"]
    finally:
        await stop_all([a, b])
