"""LiteLLM's self-service, through the real HTTP app with real keys: a `proxy_admin`'s key
is the master key's equal; a viewer reads all and writes nothing; an `internal_user`
makes, lists, changes and deletes its own keys within its own limits; a team's admin
does so for the team's keys, a team's plain member does not; `/user/update` upserts;
a team's creator is its admin member."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import trio
from helpers import MASTER_KEY, RunningGateway, start_gateway
from openai.types.chat import ChatCompletionMessageParam

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def config(database_url: str = "sqlite://:memory:") -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": "mock/gpt-4o"}}
            for name in ("good", "other")
        ],
        "general_settings": {"database_url": database_url},
    }


class Admin:
    """Calls as one key, each answer checked for the status it should have."""

    def __init__(self, gateway: RunningGateway, key: str = MASTER_KEY) -> None:
        self.gateway, self.key = gateway, key

    async def post(self, path: str, body: dict[str, Any], status: int = 200) -> Any:
        async with self.gateway.client(self.key) as client:
            reply = await client.post(path, json=body)
        return _checked(reply, status)

    async def get(self, path: str, status: int = 200) -> Any:
        async with self.gateway.client(self.key) as client:
            reply = await client.get(path)
        return _checked(reply, status)


def _checked(reply: httpx.Response, status: int) -> Any:
    assert reply.status_code == status, reply.text
    if status == 403:
        assert reply.json()["error"]["type"] == "permission_error", reply.text
    return reply.json()


async def user_with_key(master: Admin, user_id: str, **fields: Any) -> Admin:
    await master.post("/user/new", {"user_id": user_id, "auto_create_key": False, **fields})
    made = await master.post("/key/generate", {"user_id": user_id})
    return Admin(master.gateway, made["key"])


async def test_a_proxy_admins_key_is_the_master_keys_equal(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    boss = await user_with_key(master, "boss", user_role="proxy_admin")
    await boss.post("/user/new", {"user_id": "carol", "max_budget": 5})
    carols = await boss.post("/key/generate", {"user_id": "carol", "models": ["good"]})
    team = await boss.post("/team/new", {"team_id": "t1", "members_with_roles": []})
    # LiteLLM makes a team's creator its admin member: here the boss's user.
    assert team["members_with_roles"] == [{"user_id": "boss", "user_email": None, "role": "admin"}]
    await boss.post("/team/member_add", {"team_id": "t1", "member": {"user_id": "carol"}})
    await boss.post("/key/block", {"key": carols["key"]})
    await boss.post("/key/unblock", {"key": carols["key"]})
    await boss.post("/user/update", {"user_id": "carol", "user_role": "internal_user"})
    assert (await boss.get("/user/info?user_id=carol"))["user_info"]["user_role"] == "internal_user"
    listed = await boss.get("/key/list")
    # The boss's, carol's from `/user/new` (LiteLLM makes one), and the one made for her.
    assert carols["token"] in listed["keys"] and listed["total_count"] == 3
    await boss.get("/spend/logs")
    await boss.post("/model/new", {"model_name": "added", "litellm_params": {"model": "mock/x"}})
    # Its deployments' details, as the master key sees them.
    [added] = [d for d in (await boss.get("/model/info"))["data"] if d["model_name"] == "added"]
    assert added["litellm_params"]["model"] == "mock/x"
    await boss.post("/team/delete", {"team_ids": ["t1"]})
    await boss.post("/user/delete", {"user_ids": ["carol"]})


async def test_a_viewer_reads_everything_and_writes_nothing(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    viewer = await user_with_key(master, "vic", user_role="proxy_admin_viewer")
    other = await master.post("/key/generate", {"user_id": "someone"})
    await master.post("/team/new", {"team_id": "t1"})
    info = await viewer.get(f"/key/info?key={other['token']}")
    assert info["info"]["user_id"] == "someone"
    assert other["token"] in (await viewer.get("/key/list"))["keys"]
    assert (await viewer.get("/team/info?team_id=t1"))["team_id"] == "t1"
    assert [t["team_id"] for t in await viewer.get("/team/list")] == ["t1"]
    await viewer.get("/spend/logs")
    for path, body in (
        ("/key/generate", {}),
        ("/key/update", {"key": other["key"], "max_budget": 1}),
        ("/key/delete", {"keys": [other["key"]]}),
        ("/user/new", {}),
        ("/user/update", {"user_id": "vic", "user_role": "proxy_admin"}),
        ("/team/new", {}),
        ("/team/member_add", {"team_id": "t1", "member": {"user_id": "vic"}}),
        ("/model/delete", {"id": "x"}),
    ):
        await viewer.post(path, body, status=403)
    assert (await master.get("/user/info?user_id=vic"))["user_info"]["user_role"] == (
        "proxy_admin_viewer"
    )


async def test_an_internal_user_manages_its_own_keys_within_its_limits(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    ivy = await user_with_key(
        master, "ivy", user_role="internal_user", models=["good"], max_budget=10, rpm_limit=100
    )
    others = await master.post("/key/generate", {"user_id": "someone"})

    made = await ivy.post("/key/generate", {"key_alias": "ivy-ci", "max_budget": 5})
    assert made["user_id"] == "ivy", "a user's key is its own, as LiteLLM makes it"
    client = openai.AsyncOpenAI(api_key=made["key"], base_url=f"{gateway.url}/v1")
    answer = await client.chat.completions.create(model="good", messages=MESSAGES)
    assert answer.choices[0].message.content
    with_sdk_refusal = openai.AsyncOpenAI(api_key=made["key"], base_url=gateway.url)
    try:
        await with_sdk_refusal.post("/key/generate", body={"user_id": "someone"}, cast_to=object)
        raise AssertionError("a key for another user")
    except openai.PermissionDeniedError:
        pass

    # Not beyond its own: its user's models, budget and rates.
    for beyond, param in (
        ({"models": ["other"]}, "models"),
        ({"max_budget": 20}, "max_budget"),
        ({"rpm_limit": 1000}, "rpm_limit"),
        ({"team_id": "nope"}, None),
    ):
        refusal = await ivy.post("/key/generate", beyond, status=403)
        assert refusal["error"]["param"] == param
    assert (await ivy.post("/key/generate", {"models": ["good"], "rpm_limit": 100}))["key"]

    # Lists and reads its own keys only.
    listed = await ivy.get("/key/list?return_full_object=true")
    assert {k["user_id"] for k in listed["keys"]} == {"ivy"} and listed["total_count"] == 3
    assert (await ivy.get(f"/key/info?key={made['token']}"))["info"]["key_alias"] == "ivy-ci"
    await ivy.get(f"/key/info?key={others['token']}", status=403)
    await ivy.get("/key/info?key=" + "0" * 64, status=403)
    mine = await ivy.get("/user/info")
    assert mine["user_info"]["spend"] >= 0 and mine["user_info"]["user_role"] == "internal_user"

    # Changes its own keys, within its limits; never another's, nor to another user.
    assert (await ivy.post("/key/update", {"key": made["key"], "max_budget": 3}))["max_budget"] == 3
    await ivy.post("/key/update", {"key": made["key"], "max_budget": 11}, status=403)
    await ivy.post("/key/update", {"key": made["key"], "user_id": "someone"}, status=403)
    await ivy.post("/key/update", {"key": made["key"], "blocked": False}, status=403)
    # What restricts a key (its MCP permissions, its guardrails) is an admin's to set.
    restrictions: tuple[dict[str, Any], ...] = ({"object_permission": {}}, {"guardrails": []})
    for lifted in restrictions:
        refusal = await ivy.post("/key/update", {"key": made["key"], **lifted}, status=403)
        assert refusal["error"]["param"] == next(iter(lifted))
        await ivy.post("/key/generate", lifted, status=403)
    await ivy.post("/key/update", {"key": others["key"], "max_budget": 1}, status=403)
    await ivy.post("/key/block", {"key": made["key"]}, status=403)
    fresh = await ivy.post("/key/regenerate", {"key": made["key"]})
    assert fresh["key"] != made["key"] and fresh["user_id"] == "ivy"
    assert (await Admin(gateway, fresh["key"]).get("/key/info"))["key"] == fresh["token"]
    await Admin(gateway, made["key"]).get("/key/info", status=401)

    # Deletes its own, not another's.
    await ivy.post("/key/delete", {"keys": [others["key"]]}, status=403)
    await ivy.post("/key/delete", {"key_aliases": ["nobody-has-it"]}, status=403)
    await ivy.post("/key/delete", {"key_aliases": ["ivy-ci"]})
    await Admin(gateway, fresh["key"]).get("/key/info", status=401)
    assert (await master.get(f"/key/info?key={others['token']}"))["key"] == others["token"]

    # Admin writes stay an admin's.
    for path in ("/user/new", "/team/new"):
        await ivy.post(path, {}, status=403)
    await ivy.post("/user/update", {"user_id": "ivy", "max_budget": 1000}, status=403)


async def test_an_internal_user_viewer_reads_its_own_and_makes_nothing(
    nursery: trio.Nursery, database_url: str
) -> None:
    """On SQLite and PostgreSQL: the role is a column of the user (migration 7)."""
    gateway = await start_gateway(nursery, config(database_url))
    master = Admin(gateway)
    val = await user_with_key(master, "val", user_role="internal_user_viewer")
    spare = await master.post("/key/generate", {"user_id": "val"})
    await val.post("/key/generate", {}, status=403)
    await val.post("/key/delete", {"keys": [spare["key"]]}, status=403)
    assert len((await val.get("/key/list"))["keys"]) == 2
    assert (await val.get(f"/key/info?key={spare['token']}"))["info"]["user_id"] == "val"
    # A change of role applies at once.
    await master.post("/user/update", {"user_id": "val", "user_role": "internal_user"})
    await val.post("/key/delete", {"keys": [spare["key"]]})


async def test_a_team_admin_manages_the_teams_keys_and_a_member_does_not(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    tia = await user_with_key(master, "tia", user_role="internal_user")
    tom = await user_with_key(master, "tom", user_role="internal_user")
    await user_with_key(master, "out", user_role="internal_user")
    members = [{"user_id": "tia", "role": "admin"}, {"user_id": "tom", "role": "user"}]
    await master.post(
        "/team/new",
        {"team_id": "t1", "models": ["good"], "max_budget": 50, "members_with_roles": members},
    )

    own = await tia.post("/key/generate", {"team_id": "t1"})
    assert own["team_id"] == "t1" and own["user_id"] == "tia"
    # A key of another member's would act as that member: the admin makes none
    # (test_a_team_admin_cannot_make_or_take_a_key_that_acts_as_another_member).
    await tia.post("/key/generate", {"team_id": "t1", "user_id": "tom"}, status=403)
    toms = await master.post("/key/generate", {"team_id": "t1", "user_id": "tom", "max_budget": 9})
    service = await tia.post("/key/generate", {"team_id": "t1", "user_id": None})
    assert service["user_id"] is None, "a team's key of no user, LiteLLM's service account"
    outsider = await tia.post("/key/generate", {"team_id": "t1", "user_id": "out"}, status=403)
    assert outsider["error"]["param"] == "user_id"
    await tia.post("/key/generate", {"team_id": "t1", "models": ["other"]}, status=403)
    await tia.post("/key/generate", {"team_id": "t1", "max_budget": 51}, status=403)
    await tia.post("/key/update", {"key": toms["key"], "max_budget": 8}, status=403)
    assert (await tia.post("/key/update", {"key": service["key"], "max_budget": 8}))[
        "max_budget"
    ] == 8
    listed = set((await tia.get("/key/list"))["keys"])
    assert {own["token"], toms["token"], service["token"]} <= listed
    assert (await tia.get(f"/key/info?key={toms['token']}"))["info"]["user_id"] == "tom"

    # The team's plain member neither makes nor changes the team's keys; its own it may
    # read, and give up.
    await tom.post("/key/generate", {"team_id": "t1"}, status=403)
    await tom.post("/key/update", {"key": toms["key"], "max_budget": 9}, status=403)
    await tom.post("/key/delete", {"keys": [own["key"]]}, status=403)
    await tom.get(f"/key/info?key={service['token']}", status=403)
    assert (await tom.get(f"/key/info?key={toms['token']}"))["info"]["team_id"] == "t1"
    await tom.post("/key/delete", {"keys": [toms["key"]]})

    await tia.post("/key/delete", {"keys": [service["key"]]})
    await tia.post("/team/update", {"team_id": "t1", "max_budget": 500}, status=403)
    # Demoted, she manages the team's keys no longer.
    await master.post("/team/member_update", {"team_id": "t1", "user_id": "tia", "role": "user"})
    await tia.post("/key/update", {"key": own["key"], "max_budget": 1}, status=403)


async def test_user_update_makes_a_user_that_does_not_exist(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    made = await master.post(
        "/user/update",
        {"user_id": "newbie", "max_budget": 3, "user_role": "internal_user", "models": ["good"]},
    )
    assert made["user_id"] == "newbie"
    assert made["data"]["max_budget"] == 3 and made["data"]["user_role"] == "internal_user"
    info = await master.get("/user/info?user_id=newbie")
    assert info["user_info"]["models"] == ["good"] and info["user_info"]["spend"] == 0
    await master.post("/user/update", {"user_id": "newbie", "max_budget": 4})
    after = (await master.get("/user/info?user_id=newbie"))["user_info"]
    assert after["max_budget"] == 4 and after["user_role"] == "internal_user", (
        "a null changes nothing"
    )
    # By email alone there is nothing to make it under.
    await master.post("/user/update", {"user_email": "nobody@example.com"}, status=404)


async def test_a_teams_creator_is_its_admin_member(nursery: trio.Nursery) -> None:
    """LiteLLM records the master key as `default_user_id`: that membership makes no key
    a team's admin, and no key or user may take the name."""
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    made = await master.post("/team/new", {"members_with_roles": [{"user_id": "amy"}]})
    assert {m["user_id"]: m["role"] for m in made["members_with_roles"]} == {
        "amy": "user",
        "default_user_id": "admin",
    }
    named = await master.post(
        "/team/new", {"members_with_roles": [{"user_id": "default_user_id", "role": "user"}]}
    )
    assert named["members_with_roles"] == [
        {"user_id": "default_user_id", "user_email": None, "role": "user"}
    ], "named already: kept as named"
    for path, body in (
        ("/key/generate", {"user_id": "default_user_id"}),
        ("/user/new", {"user_id": "default_user_id"}),
        ("/user/update", {"user_id": "default_user_id", "max_budget": 1}),
    ):
        refusal = await master.post(path, body, status=400)
        assert refusal["error"]["param"] == "user_id"


async def test_blocking_a_user_is_refused_not_ignored(nursery: trio.Nursery) -> None:
    """No request checks a user's `blocked`: a user asked to be blocked is refused 400
    naming the field, never stored and silently not enforced."""
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    await master.post("/user/new", {"user_id": "bea", "auto_create_key": False})
    for path in ("/user/new", "/user/update"):
        refusal = await master.post(path, {"user_id": "bea", "blocked": True}, status=400)
        assert refusal["error"]["param"] == "blocked"
    await master.post("/user/update", {"user_id": "bea", "blocked": False})
    assert (await master.get("/user/info?user_id=bea"))["user_info"]["blocked"] is False


async def test_a_team_admin_cannot_make_or_take_a_key_that_acts_as_another_member(
    nursery: trio.Nursery,
) -> None:
    """A key acts with its user's role: a team's admin who could make (or regenerate, or
    re-assign) a team key for another member, a proxy_admin among them, would act as
    that member. It may still delete the member's team key."""
    gateway = await start_gateway(nursery, config())
    master = Admin(gateway)
    await user_with_key(master, "boss", user_role="proxy_admin")
    alice = await user_with_key(master, "alice", user_role="internal_user")
    await master.post(
        "/team/new",
        {"team_id": "t1", "members_with_roles": [{"user_id": "alice", "role": "admin"}]},
    )
    await alice.post("/team/member_add", {"team_id": "t1", "member": {"user_id": "boss"}})
    await alice.post("/key/generate", {"team_id": "t1", "user_id": "boss"}, status=403)
    bosses = (await master.post("/key/generate", {"team_id": "t1", "user_id": "boss"}))["key"]
    await alice.post("/key/regenerate", {"key": bosses}, status=403)
    mine = (await alice.post("/key/generate", {"team_id": "t1"}))["key"]
    await alice.post("/key/update", {"key": mine, "user_id": "boss"}, status=403)
    service = await alice.post("/key/generate", {"team_id": "t1", "user_id": None})
    assert service["user_id"] is None
    await alice.post("/key/delete", {"keys": [bosses]})
