"""LiteLLM's roles on the admin API, table-driven: every admin route the app serves, called
over HTTP by a key of each role (and the master key), is allowed or refused 403 in
OpenAI's error envelope, as LiteLLM's matrix says.

To add a route: add a `Case` to `CASES` with the callers LiteLLM lets call it.
`test_every_admin_route_is_in_the_matrix` fails until every served route has one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from helpers import MASTER_KEY, RunningGateway, start_gateway

GROUPS = ("good", "other")

# The callers: the master key, a key of a user with each of LiteLLM's roles, a key whose
# user has no role, and a key with no user at all.
MASTER = "master"
ROLES = (
    "proxy_admin",
    "proxy_admin_viewer",
    "org_admin",
    "internal_user",
    "internal_user_viewer",
    "team",
    "customer",
)
NO_ROLE = "no_role"
NO_USER = "no_user"
CALLERS = (MASTER, *ROLES, NO_ROLE, NO_USER)

ADMINS = frozenset({MASTER, "proxy_admin"})
READERS = ADMINS | {"proxy_admin_viewer"}
SELF_SERVICE = ADMINS | {"internal_user", "org_admin"}
EVERYONE = frozenset(CALLERS)


def config() -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": "mock/gpt-4o"}} for name in GROUPS
        ],
        "general_settings": {
            "database_url": "sqlite://:memory:",
            "require_auth_for_metrics_endpoint": True,
        },
        # A response cache, so that its admin routes answer past the role check.
        "litellm_settings": {"cache": True},
    }


@dataclass
class World:
    """The running gateway, each caller's key, and a key of the master's that no caller
    owns (`stranger_key`, with its `stranger_token`)."""

    gateway: RunningGateway
    keys: dict[str, str]
    stranger_key: str
    stranger_token: str

    async def call(
        self, caller: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        key = MASTER_KEY if caller == MASTER else self.keys[caller]
        async with self.gateway.client(key) as client:
            if method == "GET":
                return await client.get(path)
            return await client.request(method, path, json=body or {})

    async def admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.call(MASTER, "POST", path, body)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer


async def world(nursery: trio.Nursery) -> World:
    gateway = await start_gateway(nursery, config())
    w = World(gateway, {}, "", "")
    for role in (*ROLES, NO_ROLE):
        fields = {"user_id": f"u-{role}", "auto_create_key": False}
        await w.admin("/user/new", fields | ({"user_role": role} if role in ROLES else {}))
        w.keys[role] = (await w.admin("/key/generate", {"user_id": f"u-{role}"}))["key"]
    w.keys[NO_USER] = (await w.admin("/key/generate", {}))["key"]
    stranger = await w.admin("/key/generate", {"user_id": "stranger"})
    w.stranger_key, w.stranger_token = stranger["key"], stranger["token"]
    await w.admin("/user/new", {"user_id": "stranger", "auto_create_key": False})
    await w.admin("/team/new", {"team_id": "elsewhere"})
    return w


Body = Callable[[World, str], Awaitable[dict[str, Any]]]


async def _empty(w: World, caller: str) -> dict[str, Any]:
    return {}


def _fixed(body: dict[str, Any]) -> Body:
    async def make(w: World, caller: str) -> dict[str, Any]:
        return body

    return make


async def _spare_key(w: World, caller: str) -> dict[str, Any]:
    """A fresh key of the caller's own user, to change or delete without losing the key
    the caller calls with."""
    user = {} if caller in (MASTER, NO_USER) else {"user_id": f"u-{caller}"}
    return {"key": (await w.admin("/key/generate", user))["key"]}


async def _spare_keys(w: World, caller: str) -> dict[str, Any]:
    return {"keys": [(await _spare_key(w, caller))["key"]]}


async def _fresh_team(w: World, caller: str) -> dict[str, Any]:
    return {"team_ids": [(await w.admin("/team/new", {}))["team_id"]]}


async def _fresh_user(w: World, caller: str) -> dict[str, Any]:
    made = await w.admin("/user/new", {"auto_create_key": False})
    return {"user_ids": [made["user_id"]]}


@dataclass(frozen=True)
class Case:
    """One admin call: its method, path (a Quart rule once `{...}` is filled), body, and
    the callers LiteLLM lets make it; every other caller is refused 403."""

    method: str
    path: str
    allowed: frozenset[str]
    body: Body = _empty
    # The Quart rule the path is served by, where the path alone does not say it.
    rule: str | None = None


CASES: list[Case] = [
    # Keys: an internal user makes, changes and deletes its own; block is an admin's.
    Case("POST", "/key/generate", SELF_SERVICE),
    Case("POST", "/key/update", SELF_SERVICE, _spare_key),
    Case("POST", "/key/regenerate", SELF_SERVICE, _spare_key),
    Case("POST", "/key/delete", SELF_SERVICE, _spare_keys),
    Case("POST", "/key/block", ADMINS, _spare_key),
    Case("POST", "/key/unblock", ADMINS, _spare_key),
    Case("GET", "/key/info", EVERYONE),  # its own key
    Case("GET", "/key/info?key={stranger}", READERS, rule="/key/info"),
    Case("GET", "/key/list", EVERYONE),  # its own keys; tests/test_roles_self_service.py
    # Users.
    Case("POST", "/user/new", ADMINS),
    Case("POST", "/user/update", ADMINS, _fixed({"user_id": "scratch", "max_budget": 1})),
    Case("POST", "/user/delete", ADMINS, _fresh_user),
    Case("GET", "/user/info", EVERYONE),  # its own user (400 for a key without one)
    Case("GET", "/user/info?user_id=stranger", READERS, rule="/user/info"),
    Case("GET", "/user/list", READERS),
    # Teams: the team's admin changes its members (test_admin_api.py); here no caller is.
    Case("POST", "/team/new", ADMINS),
    Case("POST", "/team/update", ADMINS, _fixed({"team_id": "elsewhere", "max_budget": 9})),
    Case("POST", "/team/delete", ADMINS, _fresh_team),
    Case("GET", "/team/info", EVERYONE),  # its own team (400 for a key without one)
    Case("GET", "/team/info?team_id=elsewhere", READERS, rule="/team/info"),
    Case("GET", "/team/list", EVERYONE),  # its own teams
    Case(
        "POST",
        "/team/member_add",
        ADMINS,
        _fixed({"team_id": "elsewhere", "member": {"user_id": "stranger"}}),
    ),
    Case(
        "POST",
        "/team/member_update",
        ADMINS,
        _fixed({"team_id": "elsewhere", "user_id": "default_user_id", "role": "admin"}),
    ),
    Case(
        "POST",
        "/team/member_delete",
        ADMINS,
        _fixed({"team_id": "elsewhere", "user_id": "nobody"}),
    ),
    # Models: every key reads those it may use; writes are an admin's. The bodies are
    # refused 400 or 404 past the role check, so a write changes nothing.
    Case("GET", "/model/info", EVERYONE),
    Case("GET", "/v1/model/info", EVERYONE),
    Case("GET", "/model_group/info", EVERYONE),
    Case("POST", "/model/new", ADMINS),
    Case("POST", "/model/update", ADMINS),
    Case("PATCH", "/model/nope/update", ADMINS, rule="/model/<model_id>/update"),
    Case("POST", "/model/delete", ADMINS, _fixed({"id": "nope"})),
    Case("POST", "/config/reload", ADMINS),
    # MCP servers: every key reads those it may use; writes are an admin's (refused 400
    # or 404 past the role check).
    Case("GET", "/v1/mcp/server", EVERYONE),
    Case("GET", "/v1/mcp/server/nope", EVERYONE, rule="/v1/mcp/server/<server_id>"),
    Case("POST", "/v1/mcp/server", ADMINS),
    Case("PUT", "/v1/mcp/server", ADMINS),
    Case("DELETE", "/v1/mcp/server/nope", ADMINS, rule="/v1/mcp/server/<server_id>"),
    # Organizations, customers and budgets: an admin's to write, a reader of all's to
    # read. The bodies are refused 400 or 404 past the role check, or make scratch rows.
    Case("POST", "/organization/new", ADMINS),
    Case("PATCH", "/organization/update", ADMINS, _fixed({"organization_id": "nope"})),
    Case("POST", "/organization/delete", ADMINS, _fixed({"organization_ids": ["nope"]})),
    Case("POST", "/organization/member_add", ADMINS, _fixed({"organization_id": "nope"})),
    Case("POST", "/organization/member_delete", ADMINS, _fixed({"organization_id": "nope"})),
    Case("GET", "/organization/list", READERS),
    Case("GET", "/organization/info?organization_id=nope", READERS, rule="/organization/info"),
    *(
        Case("POST", f"/{prefix}/{action}", ADMINS, _fixed({"user_ids": ["nope"]}))
        for prefix in ("customer", "end_user")
        for action in ("new", "update", "delete", "block", "unblock")
    ),
    *(
        Case("GET", f"/{prefix}/info?end_user_id=nope", READERS, rule=f"/{prefix}/info")
        for prefix in ("customer", "end_user")
    ),
    Case("GET", "/customer/list", READERS),
    Case("GET", "/end_user/list", READERS),
    Case("POST", "/budget/new", ADMINS),
    Case("POST", "/budget/update", ADMINS, _fixed({"budget_id": "nope"})),
    Case("POST", "/budget/delete", ADMINS, _fixed({"id": "nope"})),
    Case("POST", "/budget/info", READERS, _fixed({"budgets": ["nope"]})),
    Case("GET", "/budget/list", READERS),
    Case("GET", "/budget/settings?budget_id=nope", READERS, rule="/budget/settings"),
    # The response cache: a reader of all sees its state; its entries are an admin's.
    Case("GET", "/cache/ping", READERS),
    Case("POST", "/cache/delete", ADMINS, _fixed({"keys": ["nope"]})),
    Case("POST", "/cache/flushall", ADMINS),
    # Spend, health, metrics.
    Case("GET", "/spend/logs", READERS),
    Case("GET", "/global/spend/report", READERS),
    Case("GET", "/health", EVERYONE),
    Case("GET", "/metrics", READERS),
    # Guardrails: listed to any key, as LiteLLM lists them.
    Case("GET", "/guardrails/list", EVERYONE),
    Case("GET", "/v2/guardrails/list", EVERYONE),
]

# Routes that are no admin route: open to all, or the model API (a key's own models).
NOT_ADMIN = {
    "/health/liveliness",
    "/health/liveness",
    "/health/readiness",
    "/v1/models",
    "/models",
    # LiteLLM's: any valid key reads the readiness details; the route list is public.
    "/health/readiness/details",
    "/routes",
    *(
        f"{prefix}/responses/<response_id>{tail}"
        for prefix in ("", "/v1")
        for tail in ("", "/input_items", "/cancel")
    ),
    # Files and batches: any key's own (trigate/api/files.py).
    *(
        f"{prefix}{path}"
        for prefix in ("", "/v1")
        for path in (
            "/files",
            "/files/<file_id>",
            "/files/<file_id>/content",
            "/batches",
            "/batches/<batch_id>",
            "/batches/<batch_id>/cancel",
        )
    ),
}


def _rule(case: Case) -> str:
    return case.rule or case.path


def test_every_admin_route_is_in_the_matrix() -> None:
    from helpers import build_app

    from trigate.roles import ROUTES

    app, _ = build_app(config())
    served = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    # The web UI is a client of these routes, with its signed-in user's role
    # (test_ui_security.py), and no admin route itself.
    ui = {r for r in served if r.startswith(("/ui", "/sso/"))}
    admin_routes = {r for r in served if r not in NOT_ADMIN and r not in ui}
    assert sorted(admin_routes - {_rule(case) for case in CASES}) == [], "add a Case"
    assert sorted(admin_routes - set(ROUTES)) == [], "add it to trigate/roles.py's ROUTES"
    assert sorted(set(ROUTES) - admin_routes) == [], "a rule in ROUTES that is not served"


async def test_each_role_on_each_admin_route(nursery: trio.Nursery) -> None:
    w = await world(nursery)
    wrong: list[str] = []
    for case in CASES:
        path = case.path.replace("{stranger}", w.stranger_token)
        for caller in CALLERS:
            body = await case.body(w, caller)
            reply = await w.call(caller, case.method, path, body)
            if caller in case.allowed:
                if reply.status_code in (401, 403) or reply.status_code >= 500:
                    wrong.append(f"{caller} {case.method} {path}: {reply.status_code} {reply.text}")
            elif not _refused_403(reply):
                wrong.append(f"{caller} {case.method} {path}: not 403 but {reply.status_code}")
    assert wrong == []


def _refused_403(reply: httpx.Response) -> bool:
    """LiteLLM's refusal in OpenAI's error envelope, which the SDK raises as
    `PermissionDeniedError`."""
    if reply.status_code != 403:
        return False
    error = reply.json()["error"]
    return set(error) == {"message", "type", "param", "code"} and (
        error["type"] == "permission_error"
    )


@pytest.mark.parametrize("role", ["superuser", "ADMIN", ""])
async def test_an_unknown_role_is_refused_by_name(nursery: trio.Nursery, role: str) -> None:
    gateway = await start_gateway(nursery, config())
    for path in ("/user/new", "/user/update"):
        async with gateway.client() as client:
            reply = await client.post(path, json={"user_id": "x", "user_role": role})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "user_role"
