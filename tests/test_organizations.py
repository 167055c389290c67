"""Organizations, LiteLLM's: `/organization/*` over HTTP, their models bounding their
teams', and their budget binding every key of every team they own."""

from __future__ import annotations

from typing import Any

import trio
from helpers import start_gateway
from test_customers import MESSAGES, call, config, ok


async def test_organization_routes_speak_litellms_shapes(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    made = await ok(
        gateway,
        "/organization/new",
        {"organization_alias": "acme", "models": ["mock"], "max_budget": 10, "rpm_limit": 5},
    )
    org = made["organization_id"]
    assert made["organization_alias"] == "acme" and made["models"] == ["mock"]
    assert made["spend"] == 0 and made["members"] == [] and made["teams"] == []
    # Every organization has a budget, made from its fields when none is named.
    assert made["litellm_budget_table"]["max_budget"] == 10
    assert made["litellm_budget_table"]["rpm_limit"] == 5

    team = await ok(
        gateway, "/team/new", {"team_alias": "t", "organization_id": org, "models": ["mock"]}
    )
    added = await ok(
        gateway,
        "/organization/member_add",
        {
            "organization_id": org,
            "member": [{"role": "org_admin", "user_id": "ann"}, {"user_email": "bo@example.com"}],
        },
    )
    assert added["organization_id"] == org
    assert added["updated_users"][0]["user_id"] == "ann"
    roles = [m["user_role"] for m in added["updated_organization_memberships"]]
    assert roles == ["org_admin", "internal_user"]
    twice = await call(
        gateway, "/organization/member_add", {"organization_id": org, "member": {"user_id": "ann"}}
    )
    assert twice.status_code == 400

    info = await ok(gateway, f"/organization/info?organization_id={org}")
    assert [t["team_id"] for t in info["teams"]] == [team["team_id"]]
    assert {m["user_id"]: m["user_role"] for m in info["members"]}["ann"] == "org_admin"
    assert (await ok(gateway, "/organization/info", {"organizations": [org]}))[0] == info
    assert [o["organization_id"] for o in await ok(gateway, "/organization/list")] == [org]

    updated = await call(
        gateway,
        "/organization/update",
        {"organization_id": org, "organization_alias": "acme2", "max_budget": 20},
        method="PATCH",
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["organization_alias"] == "acme2"
    assert updated.json()["litellm_budget_table"]["max_budget"] == 20
    # A budget to link to and budget fields at once: which would bind is ambiguous.
    both_at_once = {"budget_id": made["budget_id"], "max_budget": 1}
    for route, named in (
        ("/organization/new", {"organization_alias": "other"}),
        ("/organization/update", {"organization_id": org}),
    ):
        both = await call(gateway, route, {**named, **both_at_once})
        assert both.status_code == 400 and both.json()["error"]["param"] == "budget_id", both.text

    removed = await call(
        gateway,
        "/organization/member_delete",
        {"organization_id": org, "user_id": "ann"},
        method="DELETE",
    )
    assert removed.status_code == 200 and removed.json()["user_id"] == "ann"
    missing = await call(gateway, "/organization/info?organization_id=nope", method="GET")
    assert missing.status_code == 404

    key = (await ok(gateway, "/key/generate", {"team_id": team["team_id"]}))["key"]
    deleted = await call(
        gateway, "/organization/delete", {"organization_ids": [org]}, method="DELETE"
    )
    assert deleted.status_code == 200 and deleted.json()[0]["organization_id"] == org
    # Its teams and their keys go with it, as in LiteLLM.
    assert await ok(gateway, "/team/list") == []
    chat = {"model": "mock", "messages": MESSAGES}
    assert (await call(gateway, "/v1/chat/completions", chat, key)).status_code == 401


async def test_a_team_cannot_exceed_its_organizations_models(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    org = (await ok(gateway, "/organization/new", {"organization_alias": "o", "models": ["mock"]}))[
        "organization_id"
    ]
    for team, field in (
        ({"organization_id": org, "models": ["mock", "gpt-5"]}, "models"),
        ({"organization_id": org}, "models"),  # no models would mean every model
        ({"organization_id": "no-such-org", "models": ["mock"]}, "organization_id"),
    ):
        reply = await call(gateway, "/team/new", team)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == field
    team = await ok(gateway, "/team/new", {"organization_id": org, "models": ["mock"]})
    widened = await call(gateway, "/team/update", {"team_id": team["team_id"], "models": ["x"]})
    assert widened.status_code == 400 and widened.json()["error"]["param"] == "models"


async def test_an_organizations_budget_binds_every_key_of_its_teams(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, config())
    org = (
        await ok(gateway, "/organization/new", {"organization_alias": "o", "max_budget": 0.001})
    )["organization_id"]
    keys = []
    for _ in range(2):
        team = await ok(gateway, "/team/new", {"organization_id": org})
        keys.append((await ok(gateway, "/key/generate", {"team_id": team["team_id"]}))["key"])
    chat: dict[str, Any] = {"model": "mock", "messages": MESSAGES}
    assert (await call(gateway, "/v1/chat/completions", chat, keys[0])).status_code == 200
    for key in keys:
        refused = await call(gateway, "/v1/chat/completions", chat, key)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["type"] == "budget_exceeded"
        assert "this organization's" in refused.json()["error"]["message"]
    assert await gateway.gateway.ledger.flush()
    spent = await ok(gateway, f"/organization/info?organization_id={org}")
    assert spent["spend"] > 0.001
    # Blocking the organization stops its keys.
    await ok(gateway, "/organization/update", {"organization_id": org, "blocked": True})
    blocked = await call(gateway, "/v1/chat/completions", chat, keys[1])
    assert blocked.status_code == 401 and blocked.json()["error"]["code"] == "organization_blocked"


async def test_a_key_joins_an_organization_only_through_its_team(nursery: trio.Nursery) -> None:
    """LiteLLM's `/key/generate` takes an `organization_id`; trigate binds a key to an
    organization through its team, so one given directly is refused, never ignored."""
    gateway = await start_gateway(nursery, config())
    org = (await ok(gateway, "/organization/new", {"organization_alias": "o"}))["organization_id"]
    reply = await call(gateway, "/key/generate", {"organization_id": org})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "organization_id"


async def test_an_organizations_models_bind_its_keys(nursery: trio.Nursery) -> None:
    """Narrowing an organization's models takes the model from its teams' keys at once,
    though the teams still name it."""
    gateway = await start_gateway(nursery, config())
    org = (await ok(gateway, "/organization/new", {"organization_alias": "o", "models": ["mock"]}))[
        "organization_id"
    ]
    team = await ok(gateway, "/team/new", {"organization_id": org, "models": ["mock"]})
    key = (await ok(gateway, "/key/generate", {"team_id": team["team_id"]}))["key"]
    chat = {"model": "mock", "messages": MESSAGES}
    assert (await call(gateway, "/v1/chat/completions", chat, key)).status_code == 200
    await ok(gateway, "/organization/update", {"organization_id": org, "models": ["other"]})
    refused = await call(gateway, "/v1/chat/completions", chat, key)
    assert refused.status_code == 403, refused.text
    assert "This organization may not use model `mock`" in refused.json()["error"]["message"]


async def test_two_organizations_adding_one_new_user_at_once_share_it(
    nursery: trio.Nursery,
) -> None:
    """Two member_add calls naming the same user nobody has made yet: both succeed, and
    the user made by one is the member of both (the other call's insert conflicts)."""
    gateway = await start_gateway(nursery, config())
    orgs = [
        (await ok(gateway, "/organization/new", {"organization_alias": alias}))["organization_id"]
        for alias in ("one", "two")
    ]
    statuses: list[int] = []

    async def add(org: str) -> None:
        body = {"organization_id": org, "member": {"user_id": "new-user"}}
        statuses.append((await call(gateway, "/organization/member_add", body)).status_code)

    async with trio.open_nursery() as adding:
        for org in orgs:
            adding.start_soon(add, org)
    assert statuses == [200, 200]
    users = await ok(gateway, "/user/list")
    assert [u["user_id"] for u in users["users"]].count("new-user") == 1
