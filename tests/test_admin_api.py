"""The admin API as LiteLLM's users know it, called over HTTP as the master key, a team's
admin, a plain member's key and a stranger's key: who may do what, and LiteLLM's shapes.
Also: `models` enforced on every model route, and team `model_aliases`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio
from helpers import MASTER_KEY, RunningGateway, sdk, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
GROUPS = ("good", "other", "bad")


def config(database_url: str = "sqlite://:memory:") -> dict[str, Any]:
    """Three model groups on the built-in mock provider, priced so spend is visible."""
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": "mock/gpt-4o",
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 1e-6,
                },
            }
            for name in GROUPS
        ],
        "general_settings": {"database_url": database_url},
    }


@dataclass
class Actors:
    """A team `t1` whose admin is alice and whose plain member is bob, each with a key in
    the team; a stranger, eve, with a key of her own and no team."""

    gateway: RunningGateway
    alice: str
    bob: str
    eve: str
    alice_token: str
    bob_token: str
    eve_token: str

    def client(self, key: str = MASTER_KEY) -> httpx.AsyncClient:
        return self.gateway.client(key)


async def admin(gateway: RunningGateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with gateway.client() as client:
        reply = await client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


async def key_for(gateway: RunningGateway, **fields: Any) -> dict[str, Any]:
    return await admin(gateway, "/key/generate", fields)


async def actors(nursery: trio.Nursery, database_url: str = "sqlite://:memory:") -> Actors:
    gateway = await start_gateway(nursery, config(database_url))
    await admin(
        gateway,
        "/team/new",
        {
            "team_id": "t1",
            "team_alias": "ml",
            "members_with_roles": [
                {"role": "admin", "user_id": "alice"},
                {"role": "user", "user_id": "bob", "user_email": "bob@example.com"},
            ],
        },
    )
    await admin(gateway, "/user/new", {"user_id": "eve", "auto_create_key": False})
    await admin(gateway, "/team/new", {"team_id": "t2"})
    alice = await key_for(gateway, user_id="alice", team_id="t1")
    bob = await key_for(gateway, user_id="bob", team_id="t1")
    eve = await key_for(gateway, user_id="eve")
    return Actors(
        gateway, alice["key"], bob["key"], eve["key"], alice["token"], bob["token"], eve["token"]
    )


async def get(actors: Actors, key: str, path: str) -> httpx.Response:
    async with actors.client(key) as client:
        return await client.get(path)


async def post(actors: Actors, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with actors.client(key) as client:
        return await client.post(path, json=body)


def refused(reply: httpx.Response, status: int = 403) -> bool:
    kind = {401: "authentication_error", 403: "permission_error"}[status]
    return reply.status_code == status and reply.json()["error"]["type"] == kind


# Who may read what.


async def test_a_key_reads_its_own_key_and_no_other(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    own = await get(a, a.bob, "/key/info")
    assert own.status_code == 200
    assert own.json()["key"] == a.bob_token and own.json()["info"]["user_id"] == "bob"
    assert a.bob not in own.text and "token" not in own.json()["info"]
    assert (await get(a, a.bob, f"/key/info?key={a.bob}")).status_code == 200
    assert (await get(a, a.bob, f"/key/info?key={a.bob_token}")).status_code == 200
    assert refused(await get(a, a.bob, f"/key/info?key={a.alice_token}"))
    assert refused(await get(a, a.eve, f"/key/info?key={a.bob}"))
    # A key that does not exist is refused alike: a refusal tells nothing of others' keys.
    assert refused(await get(a, a.eve, "/key/info?key=" + "0" * 64))
    assert (await get(a, MASTER_KEY, f"/key/info?key={a.bob}")).status_code == 200
    assert (await get(a, MASTER_KEY, "/key/info")).status_code == 400
    assert refused(await get(a, "sk-" + "n" * 40, "/key/info"), 401)


async def test_a_key_reads_its_own_user_with_its_teams(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    own = (await get(a, a.alice, "/user/info")).json()
    assert own["user_id"] == "alice" and own["user_info"]["teams"] == ["t1"]
    [team] = own["teams"]
    assert team["team_id"] == "t1" and team["team_alias"] == "ml"
    assert {m["user_id"]: m["role"] for m in team["members_with_roles"]} == {
        "alice": "admin",
        "bob": "user",
        "default_user_id": "admin",  # its creator, the master key, as in LiteLLM
    }
    assert [k["token"] for k in own["keys"]] == [a.alice_token]
    assert a.alice not in str(own)
    assert (await get(a, a.alice, "/user/info?user_id=alice")).status_code == 200
    assert refused(await get(a, a.alice, "/user/info?user_id=bob"))
    assert refused(await get(a, a.eve, "/user/info?user_id=nobody"))
    master = await get(a, MASTER_KEY, "/user/info?user_id=eve")
    assert master.status_code == 200 and master.json()["teams"] == []


async def test_a_key_reads_its_own_team_and_no_other(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    for key in (a.alice, a.bob):
        own = await get(a, key, "/team/info")
        assert own.status_code == 200 and own.json()["team_id"] == "t1"
        info = own.json()["team_info"]
        assert [m["user_id"] for m in info["members_with_roles"]] == [
            "alice",
            "bob",
            "default_user_id",
        ]
        assert info["members_with_roles"][1]["user_email"] == "bob@example.com"
        assert {k["token"] for k in own.json()["keys"]} == {a.alice_token, a.bob_token}
        assert refused(await get(a, key, "/team/info?team_id=t2"))
    assert refused(await get(a, a.eve, "/team/info?team_id=t1"))
    assert (await get(a, a.eve, "/team/info")).status_code == 400, "eve has no team"
    # A member's key outside the team reads it too, as LiteLLM lets a member.
    solo = (await key_for(a.gateway, user_id="bob"))["key"]
    assert (await get(a, solo, "/team/info?team_id=t1")).status_code == 200
    assert (await get(a, MASTER_KEY, "/team/info?team_id=t2")).status_code == 200
    assert (await get(a, MASTER_KEY, "/team/info?team_id=t9")).status_code == 404


WRITES: list[tuple[str, dict[str, Any]]] = [
    ("/key/generate", {}),
    ("/key/update", {"key": "sk-" + "x" * 40}),
    ("/key/delete", {"keys": ["x"]}),
    ("/key/regenerate", {"key": "sk-" + "x" * 40}),
    ("/key/block", {"key": "sk-" + "x" * 40}),
    ("/key/unblock", {"key": "sk-" + "x" * 40}),
    ("/team/new", {}),
    ("/team/update", {"team_id": "t1", "models": []}),
    ("/team/delete", {"team_ids": ["t1"]}),
    ("/user/new", {}),
    ("/user/update", {"user_id": "eve", "models": []}),
    ("/user/delete", {"user_ids": ["eve"]}),
]


async def test_everything_that_writes_needs_an_admin(nursery: trio.Nursery) -> None:
    """For keys whose users have no role (tests/test_roles.py has the roles), a team's
    admin included: its only writes are its team's members."""
    a = await actors(nursery)
    for key in (a.alice, a.bob, a.eve):
        for path, body in WRITES:
            assert refused(await post(a, key, path, body)), (path, key)
        for path in ("/spend/logs", "/global/spend/report"):
            assert refused(await get(a, key, path)), path
    async with httpx.AsyncClient(base_url=a.gateway.url) as anonymous:
        for path, body in WRITES:
            assert refused(await anonymous.post(path, json=body), 401), path
        for path in ("/key/info", "/user/info", "/team/info"):
            assert refused(await anonymous.get(path), 401), path
        member = {"team_id": "t1", "member": {"user_id": "x"}}
        assert refused(await anonymous.post("/team/member_add", json=member), 401)
    assert (await get(a, MASTER_KEY, "/team/info?team_id=t1")).json()["team_info"]["team_id"]
    assert len((await get(a, MASTER_KEY, "/key/list")).json()["keys"]) == 3


# Team members.


async def test_a_team_admin_manages_its_members(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    await admin(a.gateway, "/user/new", {"user_id": "carol", "auto_create_key": False})
    added = await post(
        a, a.alice, "/team/member_add", {"team_id": "t1", "member": {"user_id": "carol"}}
    )
    assert added.status_code == 200
    assert added.json()["team_id"] == "t1"
    members = {m["user_id"]: m["role"] for m in added.json()["members_with_roles"]}
    assert members == {"alice": "admin", "bob": "user", "carol": "user", "default_user_id": "admin"}
    assert [u["user_id"] for u in added.json()["updated_users"]] == ["carol"]
    by_email = await post(
        a,
        MASTER_KEY,
        "/team/member_add",
        {"team_id": "t1", "member": [{"role": "admin", "user_email": "dan@example.com"}]},
    )
    dan = by_email.json()["updated_users"][0]
    assert dan["user_email"] == "dan@example.com" and dan["user_id"]
    assert (await get(a, MASTER_KEY, f"/user/info?user_id={dan['user_id']}")).status_code == 200, (
        "the master key's new member's user is made, as LiteLLM makes it"
    )
    updated = await post(
        a, a.alice, "/team/member_update", {"team_id": "t1", "user_id": "carol", "role": "admin"}
    )
    assert updated.json() == {
        "team_id": "t1",
        "user_id": "carol",
        "user_email": None,
        "max_budget_in_team": None,
        "tpm_limit": None,
        "rpm_limit": None,
    }
    deleted = await post(
        a, a.alice, "/team/member_delete", {"team_id": "t1", "user_email": "bob@example.com"}
    )
    assert deleted.status_code == 200
    assert "bob" not in {m["user_id"] for m in deleted.json()["members_with_roles"]}
    assert (await get(a, a.bob, "/team/info?team_id=t1")).status_code == 200, "his key is in t1"
    info = (await get(a, MASTER_KEY, "/user/info?user_id=bob")).json()
    assert info["teams"] == [], "bob's user left the team"


async def test_a_team_admin_learns_nothing_of_other_users_and_makes_none(
    nursery: trio.Nursery,
) -> None:
    """Alice admins t1. Adding eve (by email or id) must not hand her eve's profile, which
    `/user/info` refuses her; naming a user that does not exist makes none."""
    a = await actors(nursery)
    await admin(
        a.gateway,
        "/user/update",
        {"user_id": "eve", "user_email": "eve@example.com", "max_budget": 77.5,
         "metadata": {"secret": "eve-private"}},
    )  # fmt: skip
    assert refused(await get(a, a.alice, "/user/info?user_id=eve"))
    added = await post(
        a, a.alice, "/team/member_add", {"team_id": "t1", "member": {"user_id": "eve"}}
    )
    assert added.status_code == 200, added.text
    assert added.json()["updated_users"] == [{"user_id": "eve", "user_email": None}]
    assert "eve@example.com" not in added.text and "eve-private" not in added.text
    assert "77.5" not in added.text
    await post(a, MASTER_KEY, "/team/member_delete", {"team_id": "t1", "user_id": "eve"})
    by_email = await post(
        a, a.alice, "/team/member_add",
        {"team_id": "t1", "member": {"user_email": "eve@example.com"}},
    )  # fmt: skip
    assert by_email.json()["updated_users"] == [{"user_id": "eve", "user_email": "eve@example.com"}]
    assert "eve-private" not in by_email.text and "77.5" not in by_email.text
    for member in ({"user_id": "made-up"}, {"user_email": "new@example.com"}):
        made = await post(a, a.alice, "/team/member_add", {"team_id": "t1", "member": member})
        assert made.status_code == 400 and made.json()["error"]["code"] == "user_not_found"
    assert (await get(a, MASTER_KEY, "/user/info?user_id=made-up")).status_code == 404
    members = (await get(a, MASTER_KEY, "/team/info?team_id=t1")).json()["team_info"]
    assert {m["user_id"] for m in members["members_with_roles"]} == {
        "alice",
        "bob",
        "eve",
        "default_user_id",
    }


async def test_only_the_master_key_and_the_teams_admins_change_members(
    nursery: trio.Nursery,
) -> None:
    a = await actors(nursery)
    add = {"team_id": "t1", "member": {"user_id": "mallory", "role": "admin"}}
    for key in (a.bob, a.eve):
        assert refused(await post(a, key, "/team/member_add", add))
        assert refused(
            await post(a, key, "/team/member_update", {"team_id": "t1", "user_id": "bob"})
        )
        assert refused(
            await post(a, key, "/team/member_delete", {"team_id": "t1", "user_id": "alice"})
        )
    other = {"team_id": "t2", "member": {"user_id": "alice", "role": "admin"}}
    assert refused(await post(a, a.alice, "/team/member_add", other)), "alice admins t1 only"
    # A team that does not exist is refused to a non-admin alike, and 404 to the master key.
    assert refused(await post(a, a.eve, "/team/member_add", {**add, "team_id": "t9"}))
    assert (
        await post(a, MASTER_KEY, "/team/member_add", {**add, "team_id": "t9"})
    ).status_code == (404)
    assert (await post(a, MASTER_KEY, "/team/member_add", other)).status_code == 200
    members = (await get(a, MASTER_KEY, "/team/info?team_id=t1")).json()["team_info"]
    assert "mallory" not in {m["user_id"] for m in members["members_with_roles"]}


async def test_member_calls_refuse_bad_input_with_400(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/team/member_add", {"team_id": "t1", "member": {"user_id": "bob"}}),  # already in
        ("/team/member_add", {"team_id": "t1", "member": [{"user_id": "x"}, {"user_id": "x"}]}),
        ("/team/member_add", {"team_id": "t1", "member": {"role": "user"}}),
        ("/team/member_add", {"team_id": "t1", "member": {"user_id": "x", "role": "owner"}}),
        (
            "/team/member_add",
            {"team_id": "t1", "member": {"user_id": "x"}, "max_budget_in_team": -5},
        ),
        ("/team/member_delete", {"team_id": "t1", "user_id": "eve"}),  # not a member
        ("/team/member_delete", {"team_id": "t1"}),
        ("/team/member_update", {"team_id": "t1", "user_id": "eve", "role": "admin"}),
        ("/team/member_update", {"team_id": "t9", "user_id": "eve"}),
        ("/team/new", {"members_with_roles": [{"user_id": "x"}, {"user_id": "x"}]}),
    ]
    for path, body in cases:
        reply = await post(a, MASTER_KEY, path, body)
        assert reply.status_code == 400, (path, body, reply.text)
        assert reply.json()["error"]["type"] == "invalid_request_error"
    reply = await post(a, MASTER_KEY, "/team/member_delete", {"team_id": "t1"})
    assert "user_id" in reply.json()["error"]["message"]


# Users.


async def test_a_users_update_binds_its_keys_at_once_and_its_delete_takes_them(
    nursery: trio.Nursery,
) -> None:
    a = await actors(nursery)
    body = {"model": "good", "messages": MESSAGES}
    assert (await post(a, a.bob, "/v1/chat/completions", body)).status_code == 200
    updated = await admin(a.gateway, "/user/update", {"user_id": "bob", "models": ["other"]})
    assert updated["user_id"] == "bob" and updated["data"]["models"] == ["other"]
    assert (await post(a, a.bob, "/v1/chat/completions", body)).status_code == 403
    by_email = await admin(
        a.gateway, "/user/update", {"user_email": "bob@example.com", "models": None}
    )
    assert by_email["data"]["models"] == ["other"], "a null changes nothing"
    # An unknown user id is made, as LiteLLM upserts (tests/test_roles.py).
    assert (await post(a, MASTER_KEY, "/user/update", {"models": []})).status_code == 400
    deleted = await admin(a.gateway, "/user/delete", {"user_ids": ["bob"]})
    assert deleted["count"] == 1 and deleted["deleted_keys"] == [a.bob_token]
    assert refused(await post(a, a.bob, "/v1/chat/completions", body), 401)
    assert (await get(a, MASTER_KEY, "/user/info?user_id=bob")).status_code == 404
    team = (await get(a, a.alice, "/team/info")).json()["team_info"]
    assert [m["user_id"] for m in team["members_with_roles"]] == ["alice", "default_user_id"]


# Keys in LiteLLM's shapes.


async def test_key_generate_and_update_answer_in_litellms_shapes(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    made = await key_for(a.gateway, key_alias="ci", models=["good"], metadata={"env": "ci"})
    token = hashlib.sha256(made["key"].encode()).hexdigest()
    assert made["token_id"] == made["token"] == token
    assert made["key_name"] == f"sk-...{made['key'][-4:]}"
    for field, value in (("models", ["good"]), ("metadata", {"env": "ci"}), ("spend", 0.0),
                         ("max_budget", None), ("expires", None), ("blocked", False),
                         ("user_id", None), ("team_id", None), ("key_alias", "ci")):  # fmt: skip
        assert made[field] == value, field
    updated = await admin(a.gateway, "/key/update", {"key": made["key"], "metadata": {"v": 2}})
    assert updated["metadata"] == {"v": 2} and updated["models"] == ["good"]
    assert updated["key"] == token and made["key"] not in str(updated)
    blocked = await admin(a.gateway, "/key/block", {"key": token})
    assert blocked["blocked"] is True and blocked["token"] == token


async def test_an_unknown_user_id_is_accepted_and_binds_once_the_user_exists(
    nursery: trio.Nursery,
) -> None:
    a = await actors(nursery)
    key = (await key_for(a.gateway, user_id="later"))["key"]
    async with sdk(a.gateway, key) as client:
        await client.chat.completions.create(model="bad", messages=MESSAGES)  # type: ignore[arg-type]
        assert (await get(a, MASTER_KEY, "/user/info?user_id=later")).status_code == 404
        await admin(a.gateway, "/user/new", {"user_id": "later", "models": ["good"]})
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="bad", messages=MESSAGES)  # type: ignore[arg-type]


async def test_max_parallel_requests_zero_refuses_every_request(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    key = (await key_for(a.gateway, max_parallel_requests=0))["key"]
    async with sdk(a.gateway, key) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="good", messages=MESSAGES)  # type: ignore[arg-type]


async def test_the_budget_error_speaks_litellms_words(nursery: trio.Nursery) -> None:
    a = await actors(nursery)
    key = (await key_for(a.gateway, max_budget=0))["key"]
    reply = await post(a, key, "/v1/chat/completions", {"model": "good", "messages": MESSAGES})
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "budget_exceeded"
    assert "Budget has been exceeded!" in reply.json()["error"]["message"]


# `models` on every model route.


ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/chat/completions", {"messages": MESSAGES, "stream": True}),
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/embeddings", {"input": "hi"}),
    ("/v1/messages", {"messages": MESSAGES, "max_tokens": 5}),
    ("/v1/messages", {"messages": MESSAGES, "max_tokens": 5, "stream": True}),
    ("/v1/messages/count_tokens", {"messages": MESSAGES}),
    ("/v1/responses", {"input": "hi"}),
    ("/v1/responses", {"input": "hi", "stream": True}),
]


@pytest.mark.parametrize("owner", ["key", "team", "user"])
async def test_models_bind_on_every_model_route(nursery: trio.Nursery, owner: str) -> None:
    """Whichever of the key, its team or its user lists `models`, every route refuses
    another model with 403 before any upstream call, and serves a listed one."""
    gateway = await start_gateway(nursery, config())
    fields: dict[str, Any] = {}
    if owner == "team":
        await admin(gateway, "/team/new", {"team_id": "tm", "models": ["good"]})
        fields["team_id"] = "tm"
    elif owner == "user":
        await admin(gateway, "/user/new", {"user_id": "u", "models": ["good"]})
        fields["user_id"] = "u"
    else:
        fields["models"] = ["good"]
    key = (await key_for(gateway, **fields))["key"]
    async with gateway.client(key) as client:
        for path, body in ROUTES:
            denied = await client.post(path, json={**body, "model": "bad"})
            assert denied.status_code == 403, (path, body)
            assert denied.json()["error"]["type"] == "permission_error"
            assert f"This {owner} may not use model `bad`" in denied.json()["error"]["message"]
            served = await client.post(path, json={**body, "model": "good"})
            assert served.status_code == 200, (path, body, served.text)
    records = gateway.records.records
    assert {r.model_group for r in records if r.status == 200} == {"good"}
    assert all(r.deployment is None for r in records if r.status == 403), "no upstream call"
    await gateway.stop()


async def test_the_sdks_see_a_users_models_refusal(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    user = await admin(gateway, "/user/new", {"user_id": "u", "models": ["good"]})
    async with sdk(gateway, user["key"]) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.embeddings.create(model="bad", input="hi")
        with pytest.raises(openai.PermissionDeniedError):
            await client.responses.create(model="bad", input="hi")
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=user["key"], max_retries=0
    ) as client:
        with pytest.raises(anthropic.PermissionDeniedError):
            await client.messages.create(model="bad", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    await gateway.stop()


# Team model aliases.


async def test_a_team_alias_routes_to_its_model_group(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    await admin(
        gateway,
        "/team/new",
        {"team_id": "ta", "models": ["fast"], "model_aliases": {"fast": "good"}},
    )
    info = await admin(gateway, "/team/update", {"team_id": "ta"})
    assert info["team_id"] == "ta" and info["data"]["model_aliases"] == {"fast": "good"}
    key = (await key_for(gateway, team_id="ta"))["key"]
    async with gateway.client(key) as client:
        served = await client.post(
            "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES}
        )
        assert served.status_code == 200
        assert served.headers["x-trigate-model-group"] == "good"
        counted = await client.post(
            "/v1/messages/count_tokens", json={"model": "fast", "messages": MESSAGES}
        )
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
        direct = await client.post(
            "/v1/chat/completions", json={"model": "good", "messages": MESSAGES}
        )
        assert direct.status_code == 403, "the team's models list the alias, not the group"
    outsider = (await key_for(gateway))["key"]
    async with gateway.client(outsider) as client:
        unknown = await client.post(
            "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES}
        )
        assert unknown.status_code == 404, "an alias is its team's alone"
    await gateway.stop()


async def test_a_team_alias_grants_no_model_the_caller_may_not_use(nursery: trio.Nursery) -> None:
    """Allowed when the key's, team's and user's `models` all allow the alias, or all allow
    the group it maps to; never by mixing them."""
    gateway = await start_gateway(nursery, config())
    aliases = {"fast": "good", "sneaky": "bad"}
    await admin(
        gateway, "/team/new", {"team_id": "ta", "models": ["good"], "model_aliases": aliases}
    )
    await admin(
        gateway, "/user/new", {"user_id": "u", "models": ["fast"], "auto_create_key": False}
    )
    plain = (await key_for(gateway, team_id="ta"))["key"]
    with_user = (await key_for(gateway, team_id="ta", user_id="u"))["key"]

    async def status(key: str, model: str) -> int:
        async with gateway.client(key) as client:
            body = {"model": model, "messages": MESSAGES}
            return (await client.post("/v1/chat/completions", json=body)).status_code

    assert await status(plain, "fast") == 200, "the team allows the target"
    assert await status(plain, "sneaky") == 403, "an alias to a group the team may not use"
    assert await status(with_user, "fast") == 403, (
        "the team allows only the target, the user only the alias"
    )
    await gateway.stop()


# Spend, on both backends.


async def _spend_rows(gateway: RunningGateway, extras: list[dict[str, Any]]) -> list[Any]:
    """A chat request with each of `extras` in its body, one after the other, then the
    spend logs of each, once the ledger has written them."""
    ids = []
    async with gateway.client() as client:
        for extra in extras:
            body = {"model": "good", "messages": MESSAGES, **extra}
            reply = await client.post("/v1/chat/completions", json=body)
            assert reply.status_code < 500, reply.text
            ids.append(reply.headers["x-trigate-request-id"])
    await gateway.records.wait_for(len(extras))
    assert await gateway.gateway.ledger.flush()
    async with gateway.client() as client:
        return [(await client.get(f"/spend/logs?request_id={id_}")).json() for id_ in ids]


async def test_metadata_nested_too_deep_is_refused_and_spend_is_recorded_after(
    nursery: trio.Nursery, database_url: str
) -> None:
    """A client's metadata nested deeper than JSON is written (orjson's 254 levels) used
    to fail its spend batch, kept for retry with every row behind it: no spend was
    recorded again. It is now refused where the body is decoded (64 levels a field,
    trigate.nesting), and the rows after it are written."""
    deep: Any = "x"
    for _ in range(600):
        deep = {"a": deep}
    gateway = await start_gateway(nursery, config(database_url))
    async with gateway.client() as client:
        body = {"model": "good", "messages": MESSAGES, "metadata": {"deep": deep}}
        reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "metadata"
    [[plain_row]] = await _spend_rows(gateway, [{"metadata": {"plain": "yes"}}])
    assert plain_row["metadata"]["plain"] == "yes"


@pytest.mark.parametrize("user", ["ada\u0000", "ada" + "\u4e00" * 2000])
async def test_a_spend_row_holds_what_a_client_names_as_the_database_takes_it(
    nursery: trio.Nursery, database_url: str, user: str
) -> None:
    """PostgreSQL's text holds no NUL, and its index entries no more than 2,704 bytes,
    while a client's `user` may carry a NUL or run to kilobytes: the row holds it made
    storable (NUL as U+FFFD, cut at 512 characters), and the rows after it are written.
    Such a row used to fail its batch at every retry, with every row queued behind it:
    no spend was recorded again."""
    gateway = await start_gateway(nursery, config(database_url))
    [[named], [after]] = await _spend_rows(gateway, [{"user": user}, {"user": "grace"}])
    assert named["end_user"] == user[:512].replace("\u0000", "\ufffd")
    assert after["end_user"] == "grace" and named["spend"] > 0


async def test_spend_logs_and_reports_in_litellms_shapes(
    nursery: trio.Nursery, database_url: str
) -> None:
    a = await actors(nursery, database_url)
    ids = []
    for key, model in ((a.alice, "good"), (a.bob, "other"), (a.eve, "good")):
        reply = await post(a, key, "/v1/chat/completions", {"model": model, "messages": MESSAGES})
        assert reply.status_code == 200
        ids.append(reply.headers["x-trigate-request-id"])
    await a.gateway.records.wait_for(3)
    assert await a.gateway.gateway.ledger.flush()

    async def logs(query: str) -> Any:
        reply = await get(a, MASTER_KEY, f"/spend/logs?{query}")
        assert reply.status_code == 200, reply.text
        return reply.json()

    [one] = await logs(f"request_id={ids[1]}")
    assert one["request_id"] == ids[1] and one["api_key"] == a.bob_token
    assert one["user"] == "bob" and one["team_id"] == "t1" and one["model_group"] == "other"
    assert one["spend"] == one["cost"] > 0
    assert one["total_tokens"] == one["prompt_tokens"] + one["completion_tokens"]
    assert one["startTime"] <= one["endTime"]
    assert await logs("request_id=nope") == []
    assert [r["request_id"] for r in await logs(f"api_key={a.alice}")] == [ids[0]]
    assert {r["request_id"] for r in await logs("team_id=t1")} == set(ids[:2])
    assert [r["request_id"] for r in await logs("user_id=eve")] == [ids[2]]
    today = one["startTime"][:10]
    [summary] = await logs(f"start_date={today}&end_date={today}")
    assert summary["startTime"] == today and summary["spend"] == pytest.approx(3 * one["spend"])
    assert summary["users"]["bob"] == pytest.approx(one["spend"])
    assert summary["models"]["good"] == pytest.approx(2 * one["spend"])
    assert summary[a.bob_token] == pytest.approx(one["spend"])
    unsummarized = await logs(f"start_date={today}&end_date={today}&summarize=false")
    assert len(unsummarized) == 3

    report = (await get(a, MASTER_KEY, "/global/spend/report")).json()
    [day] = report
    assert day["group_by_day"] == f"{today}T00:00:00+00:00"
    teams = {team["team_name"]: team for team in day["teams"]}
    assert set(teams) == {"ml", "Unassigned Team"}
    assert teams["ml"]["total_spend"] == pytest.approx(2 * one["spend"])
    details = {(d["model"], d["api_key"]) for d in teams["ml"]["metadata"]}
    assert details == {("good", a.alice_token), ("other", a.bob_token)}
    assert all(d["total_tokens"] > 0 for d in teams["ml"]["metadata"])
    by_key = (await get(a, MASTER_KEY, "/global/spend/report?group_by=api_key")).json()
    assert {k["api_key"] for k in by_key} == {a.alice_token, a.bob_token, a.eve_token}
    assert by_key[0]["model_details"][0]["total_cost"] > 0
    mine = (await get(a, MASTER_KEY, f"/global/spend/report?api_key={a.bob}")).json()
    assert [k["api_key"] for k in mine] == [a.bob_token]
    assert mine[0]["total_input_tokens"] == one["prompt_tokens"]
    bad = await get(a, MASTER_KEY, "/global/spend/report?group_by=customer")
    assert bad.status_code == 400
    too_long = await get(a, MASTER_KEY, "/spend/logs?start_date=1900-01-01&end_date=2100-01-01")
    assert too_long.status_code == 400
    await a.gateway.stop()
