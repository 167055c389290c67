"""SSO's configuration and the callback's checks, without a provider: LiteLLM's
variables and the Google and Microsoft presets; a callback whose state does not match
the sign-in that started it, or that no sign-in started, signs no one in; and the
page to return to is always the UI's own."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio
from helpers import mock_config, start_gateway

from trigate.ui.sessions import COOKIE
from trigate.ui.signin import safe_next
from trigate.ui.sso import GOOGLE_DISCOVERY, Provider


def test_litellms_variables_and_the_presets_configure_the_provider() -> None:
    generic = Provider.from_environ(
        {
            "GENERIC_CLIENT_ID": "id",
            "GENERIC_CLIENT_SECRET": "secret",
            "GENERIC_AUTHORIZATION_ENDPOINT": "https://idp/authorize",
            "GENERIC_TOKEN_ENDPOINT": "https://idp/token",
            "GENERIC_USERINFO_ENDPOINT": "https://idp/userinfo",
            "GENERIC_SCOPE": "openid email",
            "GENERIC_USER_ID_ATTRIBUTE": "preferred_username",
            "GENERIC_USER_ROLE_ATTRIBUTE": "role",
        }
    )
    assert generic is not None
    assert (generic.authorization_endpoint, generic.scope, generic.user_id_claim) == (
        "https://idp/authorize", "openid email", "preferred_username",
    )  # fmt: skip
    google = Provider.from_environ({"GOOGLE_CLIENT_ID": "g", "GOOGLE_CLIENT_SECRET": "s"})
    assert google is not None and google.discovery_url == GOOGLE_DISCOVERY
    microsoft = Provider.from_environ({"MICROSOFT_CLIENT_ID": "m", "MICROSOFT_TENANT": "contoso"})
    assert microsoft is not None and microsoft.discovery_url is not None
    assert "/contoso/v2.0/" in microsoft.discovery_url and microsoft.role_claim == "roles"
    assert Provider.from_environ({}) is None


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("/ui/usage?start_date=2026-01-01", True),
        ("//evil.example/ui", False),
        ("https://evil.example/ui", False),
        ("/elsewhere", False),
        (None, False),
    ],
)
def test_signing_in_returns_only_to_the_ui(target: str | None, kept: bool) -> None:
    assert safe_next(target) == (target if kept else "/ui/keys")


@pytest.fixture
async def served(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("GENERIC_CLIENT_ID", "trigate-ui")
    monkeypatch.setenv("GENERIC_AUTHORIZATION_ENDPOINT", "http://127.0.0.1:9/authorize")
    monkeypatch.setenv("GENERIC_TOKEN_ENDPOINT", "http://127.0.0.1:9/token")
    running = await start_gateway(nursery, mock_config())
    yield running
    await running.stop()


async def test_a_callback_not_matching_its_sign_in_signs_no_one_in(served: Any) -> None:
    async with httpx.AsyncClient(base_url=served.url) as client:
        started = await client.get("/sso/key/generate")
        assert started.status_code == 302
        query = parse_qs(urlsplit(started.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
        assert query["redirect_uri"] == [f"{served.url}/sso/callback"]
        forged = await client.get("/sso/callback", params={"code": "c", "state": "other"})
        assert forged.status_code == 400 and COOKIE not in forged.cookies
    async with httpx.AsyncClient(base_url=served.url) as stranger:
        # A callback no sign-in of this browser started (a login CSRF).
        state = query["state"][0]
        answer = await stranger.get("/sso/callback", params={"code": "c", "state": state})
        assert answer.status_code == 400 and COOKIE not in answer.cookies
