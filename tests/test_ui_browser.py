"""The web UI in a real browser: each page used as a user would, end to end.

One scenario signs in as the admin, makes a key and calls the gateway with it through
the OpenAI SDK, finds the call's spend on the Usage page and its row in the Logs,
blocks the key and sees the next call refused, chats in the playground, and visits
the other pages; with TRIGATE_SCREENSHOTS=1, each page's screenshot is saved for the
README. A second signs in by SSO through a real OpenID provider (`oidc-provider-mock`),
the whole redirect flow."""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import openai
import pytest
import trio
from fakes import FakeUpstream, JSONReply, ReceivedRequest, StreamReply, chat_completion, stream_of
from helpers import MASTER_KEY, RunningGateway, openai_config, start_gateway
from playwright.sync_api import Page, expect
from ui_browser import in_browser, screenshot

ALIAS = "<script>alert('x')</script>"


def _answer(request: ReceivedRequest) -> JSONReply | StreamReply:
    if request.json.get("stream"):
        return stream_of(["Hello", " from", " the", " playground"])
    return JSONReply(chat_completion("Hi there"))


@pytest.fixture
async def served(nursery: trio.Nursery, upstream: FakeUpstream) -> Any:
    upstream.handler = _answer
    # A priced model, so that the usage page has spend to show.
    running = await start_gateway(nursery, openai_config(upstream, model="openai/gpt-4o-mini"))
    yield running
    await running.stop()


def sign_in(page: Page, url: str, username: str = "admin", password: str = MASTER_KEY) -> None:
    page.goto(f"{url}/ui")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#sign-in")
    expect(page).to_have_url(re.compile(r"/ui/keys"))


async def test_an_admin_makes_uses_watches_and_blocks_a_key(
    served: RunningGateway, upstream: FakeUpstream
) -> None:
    url = served.url
    upstream_base = upstream.base_url

    def scenario(page: Page) -> None:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.goto(f"{url}/ui")
        screenshot(page, "login")
        sign_in(page, url)
        # A key whose alias is markup: it must stay text.
        page.fill("#create-key input[name=key_alias]", ALIAS)
        page.fill("#create-key input[name=models]", "gpt-test")
        page.fill("#create-key input[name=max_budget]", "10")
        page.fill("#create-key input[name=metadata]", '{"env": "test"}')
        page.click("#create")
        secret = page.inner_text("#secret-value").strip()
        assert secret.startswith("sk-")
        page.click("button.copy")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        row = page.locator("#keys tbody tr", has_text="gpt-test")
        expect(row.locator("td.alias")).to_have_text(ALIAS)
        screenshot(page, "keys")

        client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0)
        answer = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "Say hi"}],
            extra_body={"metadata": {"tags": ["ui-test"]}},
        )
        assert answer.choices[0].message.content == "Hi there"

        # Shown once: the keys page never shows the secret again.
        page.goto(f"{url}/ui/keys")
        assert secret not in page.content()
        expect(page.locator("#secret-value")).to_have_count(0)

        # The call's spend and tokens reach the Usage page once the ledger has written them.
        for _ in range(50):
            page.goto(f"{url}/ui/usage")
            if page.inner_text("#total-requests") == "1":
                break
            page.wait_for_timeout(200)
        expect(page.locator("#total-requests")).to_have_text("1")
        expect(page.locator("#usage-key")).to_contain_text(ALIAS)
        expect(page.locator("#usage-model")).to_contain_text("gpt-test")
        expect(page.locator("#usage-tag")).to_contain_text("ui-test")
        assert float(page.inner_text("#total-spend").lstrip("$")) > 0
        page.wait_for_function("document.getElementById('spend-chart').width > 0")
        screenshot(page, "usage")

        # Its request in the Logs, and its detail.
        page.goto(f"{url}/ui/logs")
        log_row = page.locator("#logs tbody tr", has_text=ALIAS)
        expect(log_row).to_have_count(1)
        expect(log_row).to_contain_text("200")
        # The filters swap the table in place (htmx, loaded under the pages' CSP).
        assert page.evaluate("typeof htmx") == "object"
        page.fill("form.filters input[name=model]", "no-such-model")
        page.press("form.filters input[name=model]", "Enter")
        expect(page.locator("#logs")).to_contain_text("No requests match.")
        page.fill("form.filters input[name=model]", "gpt-test")
        page.select_option("form.filters select[name=status]", "success")
        expect(log_row).to_have_count(1)
        screenshot(page, "logs")
        log_row.get_by_role("link", name="Detail").click()
        expect(page.locator("#detail-status")).to_have_text("200")
        screenshot(page, "log-detail")

        # Block it from the Keys page: the next call is refused.
        page.goto(f"{url}/ui/keys")
        page.locator("#keys tbody tr", has_text="gpt-test").get_by_role(
            "button", name="Block"
        ).click()
        expect(page.locator(".notice")).to_have_text("Key blocked.")
        expect(
            page.locator("#keys tbody tr", has_text="gpt-test").locator("td.state")
        ).to_have_text("blocked")
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "Again"}]
            )

        # The playground streams through the gateway's chat route.
        page.goto(f"{url}/ui/playground")
        page.select_option("#chat-model", "gpt-test")
        page.fill("#chat-message", "Hello?")
        page.click("#chat-send")
        expect(page.locator(".turn.assistant.done")).to_have_text(
            "assistant: Hello from the playground"
        )
        screenshot(page, "playground")

        # Regenerate: a new secret, shown once; the old one no longer works.
        page.goto(f"{url}/ui/keys")
        row = page.locator("#keys tbody tr", has_text="gpt-test")
        row.get_by_role("button", name="Regenerate").click()
        fresh = page.inner_text("#secret-value").strip()
        assert fresh.startswith("sk-") and fresh != secret

        # Teams: make one and add a member; users and models pages.
        page.goto(f"{url}/ui/users")
        page.fill("form.grid input[name=user_id]", "alice")
        page.click("text=Create user")
        expect(page.locator("#users")).to_contain_text("alice")
        screenshot(page, "users")
        page.goto(f"{url}/ui/teams")
        page.fill("#create-team input[name=team_id]", "research")
        page.fill("#create-team input[name=team_alias]", "Research")
        page.fill("#create-team input[name=max_budget]", "50")
        page.fill("#create-team input[name=budget_duration]", "30d")
        page.click("text=Create team")
        team = page.locator("section.team", has_text="research")
        team.locator("input[name=user_id]").last.fill("alice")
        team.get_by_role("button", name="Add member").click()
        expect(page.locator("section.team", has_text="research")).to_contain_text("alice")
        screenshot(page, "teams")
        page.goto(f"{url}/ui/models")
        expect(page.locator("#models")).to_contain_text("gpt-test")
        params = {"model": "openai/gpt-4o", "api_base": upstream_base, "api_key": "sk-upstream"}
        page.fill("#add-model input[name=model_name]", "added-model")
        page.fill("#add-model textarea[name=litellm_params]", json.dumps(params))
        page.click("text=Add model")
        expect(page.locator(".notice")).to_have_text("Model added.")
        added = page.locator("#models tbody tr", has_text="added-model")
        expect(added).to_contain_text("healthy")
        screenshot(page, "models")
        added.locator("summary", has_text="Edit").click()
        added.locator("input[name=model_name]").fill("renamed-model")
        added.locator("textarea[name=litellm_params]").fill('{"rpm": 100}')
        added.get_by_role("button", name="Save").click()
        expect(page.locator(".notice")).to_have_text("Model updated.")
        added = page.locator("#models tbody tr", has_text="renamed-model")
        added.get_by_role("button", name="Remove").click()
        expect(page.locator("#models tbody tr", has_text="renamed-model")).to_have_count(0)

        # Sign out: the pages ask to sign in again.
        page.click("#sign-out")
        expect(page).to_have_url(re.compile(r"/ui/login"))
        page.goto(f"{url}/ui/keys")
        expect(page).to_have_url(re.compile(r"/ui/login"))

    await in_browser(scenario)


async def test_sso_signs_a_new_user_in_through_a_real_openid_provider(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole redirect flow in the browser: the UI's SSO button, the provider's own
    sign-in form, the callback; the user is made on its first sign-in with the default
    role, joined to the team its claims name, and sees only what that role may."""
    with warnings.catch_warnings():
        # It imports authlib's older module, which warns of its deprecation; authlib puts
        # an "always" filter for its warnings first on import, so ours goes after it.
        # authlib's stubs (types-Authlib) are not in the test extra; only imported here.
        import authlib.deprecate  # type: ignore[import-untyped]  # noqa: F401

        warnings.simplefilter("ignore", Warning)
        # oidc_provider_mock ships no py.typed marker (nor stubs): a test-only mock.
        from oidc_provider_mock import User, run_server_in_thread  # type: ignore[import-untyped]
    claims = {"email": "dana@example.com", "groups": ["research", "no-such-team"]}
    with run_server_in_thread(user_claims=[User(sub="dana", claims=claims)]) as provider:
        issuer = f"http://localhost:{provider.server_port}"
        monkeypatch.setenv("GENERIC_CLIENT_ID", "trigate-ui")
        monkeypatch.setenv("GENERIC_CLIENT_SECRET", "not-checked-by-the-mock")
        monkeypatch.setenv("GENERIC_DISCOVERY_URL", f"{issuer}/.well-known/openid-configuration")
        monkeypatch.setenv("GENERIC_USER_TEAMS_ATTRIBUTE", "groups")
        upstream = FakeUpstream(_answer)
        await upstream.start(nursery)
        running = await start_gateway(nursery, openai_config(upstream))
        async with running.client() as admin:
            assert (await admin.post("/team/new", json={"team_id": "research"})).status_code == 200
        url = running.url

        def scenario(page: Page) -> None:
            page.goto(f"{url}/ui/usage")
            expect(page).to_have_url(re.compile(r"/ui/login"))
            page.click("#sso")
            expect(page).to_have_url(re.compile(f"^{issuer}/oauth2/authorize"))
            screenshot(page, "sso-provider")
            page.fill("input[name=sub]", "dana")
            page.get_by_role("button", name="Authorize").first.click()
            # Back where the user was going, signed in as itself.
            expect(page).to_have_url(re.compile(r"/ui/usage"))
            expect(page.locator(".who")).to_contain_text("dana (internal_user_viewer)")
            # A viewer's usage needs a reader of all: the API's refusal, shown.
            expect(page.locator(".error")).to_contain_text("may not call /spend/logs")
            page.goto(f"{url}/ui/keys")
            expect(page.locator("#create-key")).to_have_count(0)

        await in_browser(scenario)
        async with running.client() as admin:
            info = (await admin.get("/user/info", params={"user_id": "dana"})).json()
        assert info["user_info"]["user_role"] == "internal_user_viewer"
        assert info["user_info"]["user_email"] == "dana@example.com"
        assert info["user_info"]["teams"] == ["research"]
        await running.stop()
