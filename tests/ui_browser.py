"""Plumbing for the web UI's browser tests: Playwright's sync API driving Debian's
chromium, run in a worker thread while the gateway serves on the test's Trio loop.

Playwright's own browser download cannot reach its host here; Debian's `chromium`
package (installed by ./scripts/test when missing) is what it drives."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from playwright.sync_api import Page, sync_playwright

CHROMIUM = os.environ.get("TRIGATE_TEST_CHROMIUM", "/usr/bin/chromium")
# Committed, and linked from the README's "Web UI" section. Rewritten only when
# TRIGATE_SCREENSHOTS=1 asks for it: a PNG differs from run to run (times, ids, fonts),
# so writing them on every run would leave each checkout's tree dirty.
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SCREENSHOTS_ENV = "TRIGATE_SCREENSHOTS"
# A browser step waits at most this long for what it expects (the gateway is local).
STEP_TIMEOUT_MS = 10_000


def chromium_or_fail() -> str:
    """The chromium binary; without it, CI fails and a developer's run skips."""
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    pytest.skip(f"no chromium at {CHROMIUM}")


async def in_browser(scenario: Callable[[Page], Any]) -> Any:
    """Run `scenario` with a fresh page, in a worker thread (Playwright's sync API runs
    its own event loop there), while this Trio loop keeps serving the gateway."""
    executable = chromium_or_fail()

    def run() -> Any:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                context.set_default_timeout(STEP_TIMEOUT_MS)
                page = context.new_page()
                page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
                # Script errors and Content-Security-Policy violations; a page answered
                # with a refusal's status is logged too, and is no error of the page's.
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on(
                    "console",
                    lambda message: (
                        errors.append(message.text)
                        if message.type == "error" and "Failed to load resource" not in message.text
                        else None
                    ),
                )
                result = scenario(page)
                assert errors == []
                return result
            finally:
                browser.close()

    return await trio.to_thread.run_sync(run)


def screenshot(page: Page, name: str) -> None:
    """Save the page as the README's `name`.png, when this run was asked to refresh them."""
    if os.environ.get(SCREENSHOTS_ENV) != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
