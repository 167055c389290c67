"""Ending UI sessions: signing out ends every session of that user (each browser's, and
the token used as an API bearer), not only the cookie of the browser that signed out;
another user's sessions live on; a new sign-in works. The password admin's sessions end
with a sign-out too, and when `UI_PASSWORD` changes."""

from __future__ import annotations

import re

import httpx
import pytest
import trio
from helpers import MASTER_KEY, RunningGateway, mock_config, start_gateway

from trigate.store import Store
from trigate.ui.sessions import COOKIE


def browser(gateway: RunningGateway, token: str | None = None) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=gateway.url, follow_redirects=False)
    if token is not None:
        client.cookies.set(COOKIE, token)
    return client


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def password_sign_in(client: httpx.AsyncClient, password: str = MASTER_KEY) -> str:
    """The password form, as a browser fills it; the session's CSRF token."""
    form = await client.get("/ui/login")
    answer = await client.post(
        "/ui/login",
        data={"username": "admin", "password": password, "csrf_token": _csrf(form.text)},
    )
    assert answer.status_code == 303, answer.text
    return _csrf((await client.get("/ui/keys")).text)


def signed_out(answer: httpx.Response) -> bool:
    return answer.status_code in (302, 303) and answer.headers["location"].startswith("/ui/login")


async def test_signing_out_ends_every_session_of_the_user(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, mock_config())
    async with running.client() as admin:
        for user in ("ula", "vera"):
            made = await admin.post(
                "/user/new", json={"user_id": user, "user_role": "internal_user"}
            )
            assert made.status_code == 200
    sessions = running.app.extensions["trigate_ui_sessions"]
    laptop, phone, other = [await sessions.start(u) for u in ("ula", "ula", "vera")]
    async with (
        browser(running, laptop.token) as on_laptop,
        browser(running, phone.token) as on_phone,
    ):
        assert (await on_phone.get("/ui/keys")).status_code == 200
        out = await on_laptop.post("/ui/logout", data={"csrf_token": laptop.csrf})
        assert signed_out(out)
        assert signed_out(await on_phone.get("/ui/keys"))
    async with running.client(phone.token) as bearer:
        refused = await bearer.get("/user/info", params={"user_id": "ula"})
        assert refused.status_code == 401 and "signed out" in refused.text
    # Another user's session lives on; signing in again works.
    async with running.client(other.token) as as_vera:
        assert (await as_vera.get("/user/info", params={"user_id": "vera"})).status_code == 200
    again = await sessions.start("ula")
    async with browser(running, again.token) as on_laptop:
        assert (await on_laptop.get("/ui/keys")).status_code == 200
    await running.stop()


async def test_a_sign_out_without_the_csrf_token_ends_nothing(nursery: trio.Nursery) -> None:
    running = await start_gateway(nursery, mock_config())
    async with browser(running) as client:
        await password_sign_in(client)
        assert (await client.post("/ui/logout", data={})).status_code == 403
        assert (await client.get("/ui/keys")).status_code == 200
    await running.stop()


async def test_the_password_admins_sessions_end_on_sign_out_and_password_change(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UI_PASSWORD", "first-password")
    first = await start_gateway(nursery, mock_config())
    async with browser(first) as client, browser(first) as other_tab:
        csrf = await password_sign_in(client, "first-password")
        other_tab.cookies.set(COOKIE, client.cookies[COOKIE])
        kept = client.cookies[COOKIE]
        assert signed_out(await client.post("/ui/logout", data={"csrf_token": csrf}))
        assert signed_out(await other_tab.get("/ui/keys"))
        async with first.client(kept) as bearer:
            assert (await bearer.get("/key/list")).status_code == 401
        await password_sign_in(client, "first-password")
        before_change = client.cookies[COOKIE]
    # The same master key, a new UI password: the old password's sessions are refused.
    monkeypatch.setenv("UI_PASSWORD", "second-password")
    second = await start_gateway(nursery, mock_config())
    async with browser(second, before_change) as client:
        assert signed_out(await client.get("/ui/keys"))
    async with second.client(before_change) as bearer:
        assert (await bearer.get("/key/list")).status_code == 401
    await first.stop()
    await second.stop()


async def test_each_identitys_epoch_moves_on_alone(database_url: str) -> None:
    store = await Store.open(database_url)
    assert await store.session_epoch("user:ula") == 0
    assert [await store.end_sessions("user:ula") for _ in range(2)] == [1, 2]
    assert await store.session_epoch("user:ula") == 2
    assert await store.session_epoch("ui:admin") == 0
    await store.close()
