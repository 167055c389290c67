"""The web UI over plain HTTP (no browser needed): its security (sign-in and its cookie,
CSRF on every form, one user's session never acting as another, stored text escaped,
the UI holding no more power than its user's role through the admin API), and the
round trips the browser test leaves out (edit forms, bad input, the playground's
refusals and its cancellation)."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import orjson
import pytest
import trio
from fakes import FakeUpstream, StreamReply, chunk
from helpers import MASTER_KEY, RunningGateway, mock_config, openai_config, start_gateway

from trigate.ui.sessions import COOKIE, Sessions
from trigate.ui.signin import SignInThrottle


@pytest.fixture
async def served(nursery: trio.Nursery) -> Any:
    config = mock_config()
    config["model_list"].append({"model_name": "other", "litellm_params": {"model": "mock/x"}})
    running = await start_gateway(nursery, config)
    yield running
    await running.stop()


def browser(gateway: RunningGateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, follow_redirects=False)


async def signed_in_admin(client: httpx.AsyncClient) -> str:
    """Sign in with the password form, as a browser does; the session's CSRF token."""
    form = await client.get("/ui/login")
    login_csrf = _csrf(form.text)
    answer = await client.post(
        "/ui/login",
        data={"username": "admin", "password": MASTER_KEY, "csrf_token": login_csrf},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/keys"
    page = await client.get("/ui/keys")
    return _csrf(page.text)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def as_user(gateway: RunningGateway, client: httpx.AsyncClient, user_id: str) -> str:
    """A session for `user_id`, as SSO signs one; its CSRF token."""
    session = gateway.app.extensions["trigate_ui_sessions"].sign(user_id)
    client.cookies.set(COOKIE, session.token)
    return str(session.csrf)


async def keys_of(gateway: RunningGateway) -> list[dict[str, Any]]:
    async with gateway.client() as admin:
        listed = await admin.get("/key/list", params={"return_full_object": "true"})
    return list(listed.json()["keys"])


async def test_the_session_cookie_is_httponly_samesite_and_expiring(served: RunningGateway) -> None:
    async with browser(served) as client:
        form = await client.get("/ui/login")
        answer = await client.post(
            "/ui/login",
            data={"username": "admin", "password": MASTER_KEY, "csrf_token": _csrf(form.text)},
        )
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=28800" in cookie


async def test_a_wrong_password_or_a_forged_sign_in_form_is_refused(
    served: RunningGateway,
) -> None:
    async with browser(served) as client:
        form = await client.get("/ui/login")
        wrong = await client.post(
            "/ui/login",
            data={"username": "admin", "password": "nope", "csrf_token": _csrf(form.text)},
        )
        assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    async with browser(served) as elsewhere:
        # A cross-site form has no sign-in cookie to match its token.
        forged = await elsewhere.post(
            "/ui/login", data={"username": "admin", "password": MASTER_KEY, "csrf_token": "x"}
        )
        assert forged.status_code == 403 and COOKIE not in forged.cookies


async def test_every_form_needs_the_sessions_csrf_token(served: RunningGateway) -> None:
    async with browser(served) as client:
        csrf = await signed_in_admin(client)
        missing = await client.post("/ui/keys", data={"key_alias": "a"})
        wrong = await client.post("/ui/keys", data={"key_alias": "b", "csrf_token": "x" + csrf})
        assert (missing.status_code, wrong.status_code) == (403, 403)
        assert await keys_of(served) == []
        # Sign-out is a form too.
        assert (await client.post("/ui/logout")).status_code == 403
        made = await client.post("/ui/keys", data={"key_alias": "c", "csrf_token": csrf})
        assert made.status_code == 200
        assert [key["key_alias"] for key in await keys_of(served)] == ["c"]


async def test_a_users_session_cannot_act_as_another(served: RunningGateway) -> None:
    async with served.client() as admin:
        for user in ("alice", "bob"):
            made = await admin.post(
                "/user/new", json={"user_id": user, "user_role": "internal_user"}
            )
            assert made.status_code == 200
        bob_key = (await admin.post("/key/generate", json={"user_id": "bob"})).json()
    async with browser(served) as alice:
        csrf = as_user(served, alice, "alice")
        page = await alice.get("/ui/keys")
        assert bob_key["token"] not in page.text
        refused = await alice.post(f"/ui/keys/{bob_key['token']}/delete", data={"csrf_token": csrf})
        assert "may not" in refused.text or "own" in refused.text
        assert bob_key["token"] in [key["token"] for key in await keys_of(served)]
        # Her CSRF token does not go with another session.
        as_user(served, alice, "bob")
        assert (
            await alice.post(f"/ui/keys/{bob_key['token']}/delete", data={"csrf_token": csrf})
        ).status_code == 403
    async with browser(served) as forger:
        # Alice's token with its subject changed to bob's: the signature no longer holds.
        token = served.app.extensions["trigate_ui_sessions"].sign("alice").token
        head, payload, signature = token.split(".")
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["sub"] = "bob"
        forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
        forger.cookies.set(COOKIE, f"{head}.{forged}.{signature}")
        answer = await forger.get("/ui/keys")
        assert answer.status_code == 302 and answer.headers["location"].startswith("/ui/login")
        # Nor does the API take it.
        api = await forger.get(
            "/key/list", headers={"authorization": f"Bearer {head}.{forged}.{signature}"}
        )
        assert api.status_code == 401


async def test_an_expired_session_signs_in_again(served: RunningGateway) -> None:
    expired = Sessions(MASTER_KEY, seconds=-1).sign(None)
    async with browser(served) as client:
        client.cookies.set(COOKIE, expired.token)
        answer = await client.get("/ui/usage")
        assert answer.status_code == 302 and "/ui/login" in answer.headers["location"]


async def test_the_ui_has_only_its_users_role(served: RunningGateway) -> None:
    async with served.client() as admin:
        made = await admin.post(
            "/user/new", json={"user_id": "viv", "user_role": "internal_user_viewer"}
        )
        assert made.status_code == 200
    async with browser(served) as viewer:
        csrf = as_user(served, viewer, "viv")
        page = await viewer.get("/ui/keys")
        assert 'id="create-key"' not in page.text  # a viewer is shown no forms
        # Posting the form anyway: the admin API refuses, with its own message.
        refused = await viewer.post("/ui/keys", data={"csrf_token": csrf, "key_alias": "v"})
        assert "may not call /key/generate" in refused.text
        assert "v" not in [key["key_alias"] for key in await keys_of(served)]
        teams = await viewer.post("/ui/teams", data={"csrf_token": csrf, "team_id": "t"})
        assert "may not call /team/new" in teams.text
        # Pages that need a reader of all are refused as the API refuses them.
        assert "may not call /spend/logs" in (await viewer.get("/ui/logs")).text


async def test_stored_text_is_always_escaped(served: RunningGateway) -> None:
    async with served.client() as admin:
        await admin.post("/key/generate", json={"key_alias": "<script>alert(1)</script>"})
        await admin.post("/team/new", json={"team_id": "t1", "team_alias": "<img src=x onerror=1>"})
    async with browser(served) as client:
        await signed_in_admin(client)
        keys = (await client.get("/ui/keys")).text
        teams = (await client.get("/ui/teams")).text
    assert "<script>alert(1)" not in keys and "&lt;script&gt;alert(1)&lt;/script&gt;" in keys
    assert "<img src=x" not in teams and "&lt;img src=x onerror=1&gt;" in teams


async def test_ui_access_mode_admin_only_lets_only_admins_in(nursery: trio.Nursery) -> None:
    config = {**mock_config(), "general_settings": {"ui_access_mode": "admin_only"}}
    running = await start_gateway(nursery, config)
    async with running.client() as admin:
        for user, role in (("ivy", "internal_user"), ("vic", "proxy_admin_viewer")):
            made = await admin.post("/user/new", json={"user_id": user, "user_role": role})
            assert made.status_code == 200
    async with browser(running) as client:
        as_user(running, client, "ivy")
        refused = await client.get("/ui/keys")
        assert refused.status_code == 403 and "admins only" in refused.text
        as_user(running, client, "vic")
        assert (await client.get("/ui/keys")).status_code == 200
    await running.stop()


async def test_the_playground_chats_as_the_user_within_its_models(served: RunningGateway) -> None:
    async with served.client() as admin:
        made = await admin.post(
            "/user/new",
            json={"user_id": "pia", "user_role": "internal_user", "models": ["mock"]},
        )
        assert made.status_code == 200
    async with browser(served) as client:
        csrf = as_user(served, client, "pia")
        page = await client.get("/ui/playground")
        assert "<option>mock</option>" in page.text and "<option>other</option>" not in page.text
        headers = {"X-CSRF-Token": csrf}
        body = {"model": "mock", "messages": [{"role": "user", "content": "Hi"}]}
        chat = await client.post("/ui/playground/chat", json=body, headers=headers)
        assert chat.status_code == 200 and "data: [DONE]" in chat.text
        [record] = await served.records.wait_for(1)
        assert (record.user_id, record.key_hash, record.stream) == ("pia", None, True)
        # A model the user may not use: the chat route's own refusal.
        other = await client.post(
            "/ui/playground/chat", json={**body, "model": "other"}, headers=headers
        )
        assert "This user may not use model `other`" in other.text
        # And no chat without the session's CSRF token.
        assert (await client.post("/ui/playground/chat", json=body)).status_code == 403
        # A body that is not a JSON object is refused as the chat route refuses one.
        for sent in (b"not json", b"[1, 2]"):
            bad = await client.post("/ui/playground/chat", content=sent, headers=headers)
            assert bad.status_code == 400, bad.text
            assert bad.json()["error"]["type"] == "invalid_request_error"


async def test_a_deleted_users_session_ends(served: RunningGateway) -> None:
    async with served.client() as admin:
        made = await admin.post("/user/new", json={"user_id": "gone", "user_role": "internal_user"})
        assert made.status_code == 200
        async with browser(served) as client:
            as_user(served, client, "gone")
            assert (await client.get("/ui/keys")).status_code == 200
            deleted = await admin.post("/user/delete", json={"user_ids": ["gone"]})
            assert deleted.status_code == 200
            # The authenticator's cache keeps a row a few seconds; the store is the truth.
            served.gateway.auth.forget("users", "gone")
            answer = await client.get("/ui/keys")
            assert answer.status_code == 302 and "/ui/login" in answer.headers["location"]


async def test_leaving_the_playground_cancels_the_upstream_request(
    nursery: trio.Nursery, upstream: FakeUpstream
) -> None:
    # A stream that goes on until its client leaves.
    upstream.handler = lambda request: StreamReply([chunk("Hi")], tail=chunk(" more"))
    running = await start_gateway(nursery, openai_config(upstream))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
    async with browser(running) as client:
        csrf = await signed_in_admin(client)
        async with client.stream(
            "POST", "/ui/playground/chat", json=body, headers={"X-CSRF-Token": csrf}
        ) as answer:
            async for _ in answer.aiter_bytes():
                break  # the first frames arrived: the browser leaves
    with trio.fail_after(10):
        await upstream.wait_for(lambda: upstream.aborted == 1)
    [record] = await running.records.wait_for(1)
    assert record.cancelled_by_client
    await running.stop()


async def test_bad_form_input_is_shown_not_stored(served: RunningGateway) -> None:
    async with browser(served) as client:
        csrf = await signed_in_admin(client)
        metadata = await client.post(
            "/ui/keys", data={"csrf_token": csrf, "key_alias": "m", "metadata": "not json"}
        )
        assert "Metadata must be a JSON object" in metadata.text
        budget = await client.post(
            "/ui/teams", data={"csrf_token": csrf, "team_id": "t", "max_budget": "lots"}
        )
        assert "`max_budget`" in budget.text  # the admin API's own message
    assert await keys_of(served) == []
    async with served.client() as admin:
        assert (await admin.get("/team/list")).json() == []


async def test_the_edit_form_updates_a_key(served: RunningGateway) -> None:
    async with served.client() as admin:
        made = (await admin.post("/key/generate", json={"key_alias": "before"})).json()
    async with browser(served) as client:
        csrf = await signed_in_admin(client)
        answer = await client.post(
            f"/ui/keys/{made['token']}/update",
            data={"csrf_token": csrf, "key_alias": "after", "max_budget": "5",
                  "budget_duration": "7d", "models": "mock", "metadata": '{"env": "ci"}'},
        )  # fmt: skip
        assert "Key updated." in answer.text
    [key] = await keys_of(served)
    assert (key["key_alias"], key["max_budget"], key["budget_duration"]) == ("after", 5.0, "7d")
    assert (key["models"], key["metadata"]) == (["mock"], {"env": "ci"})


async def test_the_keys_page_filters_and_searches(served: RunningGateway) -> None:
    async with served.client() as admin:
        for alias, user in (("alpha", "u1"), ("beta", "u2"), ("gamma", "u2")):
            made = await admin.post("/key/generate", json={"key_alias": alias, "user_id": user})
            assert made.status_code == 200
    async with browser(served) as client:
        await signed_in_admin(client)
        by_user = (await client.get("/ui/keys", params={"user_id": "u2"})).text
        searched = (await client.get("/ui/keys", params={"q": "alp"})).text
    assert "beta" in by_user and "gamma" in by_user and "alpha" not in by_user
    assert "alpha" in searched and "beta" not in searched


async def test_password_guessing_is_throttled(served: RunningGateway) -> None:
    now = [1000.0]
    served.app.extensions["trigate_ui_throttle"] = SignInThrottle(clock=lambda: now[0])
    async with browser(served) as client:
        form = await client.get("/ui/login")
        guess = {"username": "admin", "csrf_token": _csrf(form.text)}
        for n in range(SignInThrottle.MAX_FAILURES):
            wrong = await client.post("/ui/login", data={**guess, "password": f"guess-{n}"})
            assert wrong.status_code == 401
        # Even the right password waits out the window.
        right = {**guess, "password": MASTER_KEY}
        assert (await client.post("/ui/login", data=right)).status_code == 429
        now[0] += SignInThrottle.WINDOW_SECONDS + 1
        assert (await client.post("/ui/login", data=right)).status_code == 303
