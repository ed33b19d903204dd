"""The API docs work on a network that reaches nothing but the platform (SPEC §2: `/docs`): every
request the page makes goes to the server itself, and Swagger UI and ReDoc both render the spec."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.dashboard.conftest import WIDE, LiveServer


@pytest.fixture
def offline_page(browser: Any, live_server: LiveServer) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A page on a closed network: any request to another host is refused (and listed)."""
    context = browser.new_context(viewport=WIDE)
    context.set_default_timeout(15_000)
    ours = urlsplit(live_server.url).netloc
    refused: list[str] = []
    errors: list[str] = []

    def handler(route: Any, request: Any) -> None:
        if urlsplit(request.url).netloc == ours:
            route.continue_()
        else:
            refused.append(request.url)
            route.abort("internetdisconnected")

    context.route("**/*", handler)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page, refused, errors
    finally:
        context.close()


def test_swagger_ui_renders_with_the_network_closed(
    offline_page: tuple[Any, list[str], list[str]], live_server: LiveServer
) -> None:
    page, refused, errors = offline_page
    page.goto(f"{live_server.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock-tag", state="visible")
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("Handshake")
    assert page.locator(".opblock-summary-path[data-path='/v1/auth/login']").count() >= 1
    assert refused == [] and errors == []


def test_redoc_renders_with_the_network_closed(
    offline_page: tuple[Any, list[str], list[str]], live_server: LiveServer
) -> None:
    page, refused, errors = offline_page
    page.goto(f"{live_server.url}/redoc")
    page.get_by_text("/v1/auth/login").first.wait_for(state="attached")  # its operations are drawn
    page.get_by_text("Handshake").first.wait_for(state="attached")
    # ReDoc's own "API docs by Redocly" badge is an image from its site, whatever the page asks: the
    # one thing missing offline, and decoration only.
    assert [url for url in refused if not url.startswith("https://cdn.redoc.ly/")] == []
    assert errors == []


def test_the_docs_assets_are_served_by_the_platform(live_server: LiveServer) -> None:
    page = httpx.get(f"{live_server.url}/docs", timeout=10)
    assert page.status_code == 200
    assert "cdn." not in page.text and "unpkg" not in page.text
    spec = httpx.get(f"{live_server.url}/openapi.json", timeout=10).text
    assert "$defs" not in spec  # a JSON-Schema-only reference: ReDoc refuses the whole document over one
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = httpx.get(f"{live_server.url}/docs/assets/{asset}", timeout=10)
        assert response.status_code == 200 and len(response.content) > 10_000, asset
