"""What an SSO sign-in gives: the whole code flow over plain HTTP against a fake OpenID
provider on a real socket (its token and userinfo endpoints). An account outside
`ALLOWED_EMAIL_DOMAINS` is refused and never made; a new user gets
`default_internal_user_params`, or no model and no MCP server outside a team until an
admin grants them; under `ui_access_mode: admin_only` a non-admin is neither made nor
let in by a session token used as a bearer credential."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest
from helpers import RunningGateway, build_app, mock_config, sdk, start_gateway
from openai.types.chat import ChatCompletionMessageParam

from trigate.config import ConfigError
from trigate.ui.sessions import COOKIE

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


class Provider:
    """An OpenID provider whose next sign-in is `claims` (served by its userinfo)."""

    def __init__(self) -> None:
        self.claims: dict[str, Any] = {}
        self.server = FakeUpstream(self._answer)

    def _answer(self, request: ReceivedRequest) -> JSONReply:
        if request.target.startswith("/token"):
            return JSONReply({"access_token": "at", "token_type": "Bearer"})
        return JSONReply(self.claims)

    def environ(self) -> dict[str, str]:
        base = f"http://127.0.0.1:{self.server.port}"
        return {
            "GENERIC_CLIENT_ID": "trigate-ui",
            "GENERIC_CLIENT_SECRET": "secret",
            "GENERIC_AUTHORIZATION_ENDPOINT": f"{base}/authorize",
            "GENERIC_TOKEN_ENDPOINT": f"{base}/token",
            "GENERIC_USERINFO_ENDPOINT": f"{base}/userinfo",
            "GENERIC_USER_ROLE_ATTRIBUTE": "role",
        }


@pytest.fixture
async def provider(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Provider:
    found = Provider()
    await found.server.start(nursery)
    for name, value in found.environ().items():
        monkeypatch.setenv(name, value)
    return found


async def sso_sign_in(gateway: RunningGateway, provider: Provider, **claims: Any) -> httpx.Response:
    """The code flow as a browser runs it; the callback's answer (its session cookie)."""
    provider.claims = claims
    async with httpx.AsyncClient(base_url=gateway.url, follow_redirects=False) as browser:
        started = await browser.get("/sso/key/generate")
        assert started.status_code == 302
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        return await browser.get("/sso/callback", params={"state": state, "code": "c"})


def session_of(answer: httpx.Response) -> str:
    assert answer.status_code == 303, answer.text
    token = answer.cookies.get(COOKIE)
    assert token
    return token


async def user_info(gateway: RunningGateway, user_id: str) -> httpx.Response:
    async with gateway.client() as admin:
        return await admin.get("/user/info", params={"user_id": user_id})


async def chat(gateway: RunningGateway, token: str) -> Any:
    return await sdk(gateway, token).chat.completions.create(model="mock", messages=MESSAGES)


async def test_an_account_outside_the_allowed_email_domains_is_refused_and_not_made(
    nursery: trio.Nursery, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOWED_EMAIL_DOMAINS", "example.com, @corp.example")
    running = await start_gateway(nursery, mock_config())
    for claims in ({"email": "eve@gmail.com"}, {"email": "eve@example.com.evil.test"}, {}):
        refused = await sso_sign_in(running, provider, sub="eve", **claims)
        assert refused.status_code == 401 and COOKIE not in refused.cookies
        assert "not in a domain allowed" in refused.text
        assert (await user_info(running, "eve")).status_code == 404
    for user, email in (("ann", "ann@Example.com"), ("cy", "cy@corp.example")):
        session_of(await sso_sign_in(running, provider, sub=user, email=email))
        assert (await user_info(running, user)).status_code == 200
    await running.stop()


async def test_a_new_sso_user_has_no_model_or_mcp_server_until_an_admin_grants_them(
    nursery: trio.Nursery, provider: Provider
) -> None:
    config = {**mock_config(), "mcp_servers": {"tools": {"url": "http://127.0.0.1:9/mcp"}}}
    running = await start_gateway(nursery, config)
    token = session_of(await sso_sign_in(running, provider, sub="gus", email="gus@gmail.com"))
    info = (await user_info(running, "gus")).json()
    assert info["user_info"]["models"] == ["no-default-models"]
    assert info["user_info"]["user_role"] == "internal_user_viewer"
    assert info["keys"] == []  # its session is its credential: no key is made for it
    # The session used as an API bearer: no model, none listed, no MCP server.
    with pytest.raises(openai.PermissionDeniedError, match="no model outside a team"):
        await chat(running, token)
    async with running.client(token) as as_gus:
        assert (await as_gus.get("/v1/models")).json()["data"] == []
        assert (await as_gus.get("/v1/mcp/server")).json() == []
    async with running.client() as admin:
        # Through a team, the team's models.
        await admin.post("/team/new", json={"team_id": "lab", "models": ["mock"]})
        await admin.post("/team/member_add", json={"team_id": "lab", "member": {"user_id": "gus"}})
        made = await admin.post("/key/generate", json={"team_id": "lab", "user_id": "gus"})
    assert (await chat(running, made.json()["key"])).choices
    # On its own, once an admin grants it a model.
    async with running.client() as admin:
        granted = await admin.post("/user/update", json={"user_id": "gus", "models": ["mock"]})
        assert granted.status_code == 200
    running.gateway.auth.forget("users", "gus")
    assert (await chat(running, token)).choices
    await running.stop()


async def test_default_internal_user_params_are_a_new_sso_users(
    nursery: trio.Nursery, provider: Provider
) -> None:
    config = mock_config()
    defaults = {"models": ["mock"], "max_budget": 2.5, "user_role": "internal_user"}
    config["litellm_settings"] = {"default_internal_user_params": defaults}
    running = await start_gateway(nursery, config)
    token = session_of(await sso_sign_in(running, provider, sub="hal", email="hal@x.test"))
    info = (await user_info(running, "hal")).json()["user_info"]
    assert (info["models"], info["max_budget"], info["user_role"]) == (
        ["mock"], 2.5, "internal_user",
    )  # fmt: skip
    assert (await chat(running, token)).choices
    # A role the provider's claim names still wins over the default.
    session_of(await sso_sign_in(running, provider, sub="ida", role="proxy_admin_viewer"))
    assert (await user_info(running, "ida")).json()["user_info"]["user_role"] == (
        "proxy_admin_viewer"
    )
    await running.stop()


@pytest.mark.parametrize(
    ("params", "refusal"),
    [
        ({"teams": ["a"]}, "does not act on teams"),
        ({"user_role": "wizard"}, "is not a LiteLLM role"),
        ({"models": "mock"}, "expected a list of model names"),
        ({"max_budget": -1}, "max_budget: expected a number of at least 0"),
        ({"rpm_limit": 2.5}, "rpm_limit: expected a whole number"),
        ({"budget_duration": "soon"}, "budget_duration: invalid duration"),
    ],
)
def test_default_internal_user_params_trigate_would_not_give_stop_start(
    params: dict[str, Any], refusal: str
) -> None:
    config = {**mock_config(), "litellm_settings": {"default_internal_user_params": params}}
    with pytest.raises(ConfigError, match=refusal):
        build_app(config)


async def test_admin_only_refuses_a_non_admins_sign_in_and_session_token(
    nursery: trio.Nursery, provider: Provider
) -> None:
    config = {**mock_config(), "general_settings": {"ui_access_mode": "admin_only"}}
    running = await start_gateway(nursery, config)
    refused = await sso_sign_in(running, provider, sub="joe", email="joe@x.test")
    assert refused.status_code == 401 and "admins only" in refused.text
    assert (await user_info(running, "joe")).status_code == 404
    viewer = await sso_sign_in(running, provider, sub="val", role="proxy_admin_viewer")
    async with running.client(session_of(viewer)) as as_val:
        assert (await as_val.get("/user/info", params={"user_id": "val"})).status_code == 200
    # A user made by an admin, later demoted, or signed before the mode was set: its
    # session token opens no API route either.
    async with running.client() as admin:
        await admin.post("/user/new", json={"user_id": "kim", "user_role": "internal_user"})
    token = running.app.extensions["trigate_ui_sessions"].sign("kim").token
    with pytest.raises(openai.PermissionDeniedError, match="admins only"):
        await chat(running, token)
    await running.stop()
