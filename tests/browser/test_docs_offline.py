"""/docs (Swagger UI) and /redoc (ReDoc) render in Chromium with every other host blocked."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, Page, Route, expect


@pytest.fixture
def offline(browser: Browser, server) -> Iterator[tuple[Page, list[str]]]:
    own = urlparse(server.url).netloc
    blocked: list[str] = []
    context = browser.new_context()

    def guard(route: Route) -> None:
        if urlparse(route.request.url).netloc == own:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    yield context.new_page(), blocked
    context.close()


def test_swagger_ui_renders_offline(offline, server) -> None:
    page, blocked = offline
    page.goto(server.url + "/docs")
    expect(page.locator(".opblock-summary-path", has_text="/v1/predict").first).to_be_visible()
    expect(page.locator("button.authorize")).to_be_visible()
    assert blocked == []


def test_redoc_renders_offline(offline, server) -> None:
    page, blocked = offline
    page.goto(server.url + "/redoc")
    heading = page.locator("h2", has_text="Predict digits from uploaded image files")
    expect(heading.first).to_be_visible()
    # ReDoc's bundle links its own "powered by" logo from its CDN: cosmetic, and blocked here.
    assert set(blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, blocked
