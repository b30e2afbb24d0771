"""The reveal page in a real browser: Debian's chromium, headless, driven by Playwright.

Open the agent's link → press the button → the value is shown (and copied with the copy
button) → reload → "already used". The page must work under its own strict
Content-Security-Policy (no violation reported) and load nothing but itself.

Skipped when chromium or Playwright is missing, unless ``$MAILGATE_REQUIRE_CHROMIUM`` is
set (CI sets it and installs Debian's ``chromium``; Playwright never downloads a browser).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from mailgate.config import Config
from mailgate.store import Store

from .conftest import Clock
from .test_vault import config, http, links, new_ticket_with_secrets, sent_mail

__all__ = ["config"]  # the vault's config fixture, for this module's tests too

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium", path="/usr/bin:/usr/lib/chromium")
REQUIRE = bool(os.environ.get("MAILGATE_REQUIRE_CHROMIUM"))


@pytest.fixture
def browser() -> Iterator[Any]:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        problem = f"playwright is not installed ({exc})"
    if problem is None and CHROMIUM is None:
        problem = "chromium is not installed (apt-get install chromium)"
    if problem is not None:
        if REQUIRE:
            pytest.fail(f"MAILGATE_REQUIRE_CHROMIUM is set but {problem}")
        pytest.skip(problem)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_open_click_value_shown_reload_already_used(
    browser: Any, config: Config, store: Store, clock: Clock, server: int
) -> None:
    """The flow an agent goes through, in German as the browser asks."""
    new_ticket_with_secrets(config, store, clock, server)
    [text] = [text for kind, _, text in sent_mail(store) if kind == "agent_new_ticket"]
    token = links(text)[1]
    with http(config, store, clock) as listener:
        url = listener.url(token)
        origin = url.split("/secret/")[0]
        context = browser.new_context(locale="de-DE")
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        page = context.new_page()
        requested: list[tuple[str, str]] = []
        console: list[str] = []
        page.on("request", lambda r: requested.append((r.method, r.url)))
        page.on("console", lambda m: console.append(m.text))

        response = page.goto(url)
        assert response is not None and response.status == 200
        assert page.locator("h1").inner_text() == "Secret 1 zu Ticket [#1]"
        assert page.locator("#value").count() == 0

        page.locator("#reveal").click()
        page.wait_for_selector("#value")
        assert page.locator("#value").inner_text() == "geheim123"
        page.locator("#copy").click()
        page.wait_for_selector("#copied", state="visible")
        assert page.evaluate("navigator.clipboard.readText()") == "geheim123"

        page.reload()  # the browser sends the button's POST again: the secret is used
        assert page.locator("h1").inner_text() == "Dieser Link wurde bereits benutzt"
        assert "geheim123" not in page.content()
        page.goto(url)
        assert page.locator("h1").inner_text() == "Dieser Link wurde bereits benutzt"
        context.close()
    # Nothing but the page itself: no script, style, font or image from anywhere.
    assert requested == [("GET", url), ("POST", url), ("POST", url), ("GET", url)]
    assert not [line for line in console if "Content Security Policy" in line], console
