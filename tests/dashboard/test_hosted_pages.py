"""The hosted login page and /device (SPEC §12) in a real headless Chromium against a real server: the
code flow ends at the app's loopback redirect URI with no Content-Security-Policy violation, a hub is
approved on /device, and a form on another site cannot sign the browser in (login CSRF)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from playwright.sync_api import expect

from shared.testing import free_port
from tests.dashboard.conftest import PASSWORD, PHONE, LiveServer, Tab

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class Loopback:
    """What a native app listens with for its redirect (RFC 8252 §7.3), and, on /attack, a page of
    another site that submits a login form to the server."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[str] = []
        self.attack = b""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.attack if self.path == "/attack" else b"<p id=done>You can close this tab.</p>"
                if self.path.startswith("/callback"):
                    owner.received.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    with Loopback() as running:
        yield running


def register(server: LiveServer, **body: Any) -> dict[str, Any]:
    admin = server.login(server.staff("admin"))
    wanted = {"name": "Lamp app", "redirect_uris": ["http://127.0.0.1/callback"], "grant_types": ["authorization_code"]}
    response = httpx.post(f"{server.url}/v1/admin/clients", json={**wanted, **body}, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def sign_in(tab: Tab, username: str, password: str = PASSWORD) -> None:
    tab.page.fill("#username", username)
    tab.page.fill("#password", password)
    tab.page.click("#sign-in")


def test_the_code_flow_in_chromium_ends_at_the_apps_loopback_uri(
    tab: Tab, live_server: LiveServer, loopback: Loopback, tmp_path: Path
) -> None:
    app = register(live_server)
    user = live_server.register()
    verifier = generate_token(64)
    redirect = f"{loopback.url}/callback"
    query = {
        "response_type": "code",
        "client_id": app["client_id"],
        "redirect_uri": redirect,
        "state": "st-123",
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    tab.page.goto(str(httpx.URL(f"{live_server.url}/v1/oauth/authorize", params=query)))
    expect(tab.page.locator("#client-name")).to_have_text("Lamp app")
    tab.screenshot(tmp_path / "hosted-login.png")
    sign_in(tab, user.username, "not the password")
    expect(tab.page.locator("#login-error")).to_have_text("The username or password is wrong.")
    sign_in(tab, user.username)
    expect(tab.page.locator("#done")).to_be_visible()

    assert len(loopback.received) == 1
    params = parse_qs(urlsplit(loopback.received[0]).query)
    assert params["state"] == ["st-123"]
    token = httpx.post(
        f"{live_server.url}/v1/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "client_id": app["client_id"],
            "redirect_uri": redirect,
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    # No Content-Security-Policy violation on the way to the app; the one 400 is the wrong password's page.
    assert [error for error in tab.errors if "status of 400" not in error] == [], tab.errors
    assert len(tab.errors) == 1


def test_a_hub_is_approved_on_the_device_page_in_chromium(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    hub = register(live_server, name="Living-room hub", redirect_uris=[], grant_types=[DEVICE_GRANT])
    user = live_server.register()
    started = httpx.post(f"{live_server.url}/v1/oauth/device_authorization", data={"client_id": hub["client_id"]})
    assert started.status_code == 200, started.text
    codes = started.json()

    tab.page.set_viewport_size(PHONE)
    tab.page.goto(f"{live_server.url}/device?user_code={codes['user_code']}")
    sign_in(tab, user.username)
    expect(tab.page.locator("#user-code-input")).to_have_value(codes["user_code"])
    tab.screenshot(tmp_path / "device-enter.png")
    tab.page.click("#continue")
    expect(tab.page.locator("#client-name")).to_have_text("Living-room hub")
    expect(tab.page.locator("#user-code")).to_have_text(codes["user_code"])
    tab.screenshot(tmp_path / "device-confirm.png")
    tab.page.click("#approve")
    expect(tab.page.locator("#outcome")).to_have_text("Device connected")
    overflow = tab.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"

    token = httpx.post(
        f"{live_server.url}/v1/auth/token",
        data={"grant_type": DEVICE_GRANT, "device_code": codes["device_code"], "client_id": hub["client_id"]},
    )
    assert token.status_code == 200, token.text
    assert tab.errors == []


@pytest.mark.parametrize("attacker_host", ["localhost", "127.0.0.1"])
def test_a_form_on_another_site_cannot_sign_the_browser_in(
    tab: Tab, live_server: LiveServer, loopback: Loopback, attacker_host: str
) -> None:
    """Login CSRF: the attacker gets a real form token of their own and makes the victim's browser
    post the attacker's credentials with it. Cross-site the browser sends no form cookie; same-site
    on another port it names another origin: refused either way, and the victim stays signed out."""
    attacker = live_server.register()
    with httpx.Client(base_url=live_server.url) as own:
        page = own.get("/device")
        token = page.text.split('name="csrf" value="')[1].split('"')[0]
    loopback.attack = f"""<form id=f method=post action="{live_server.url}/v1/oauth/login">
<input name=csrf value="{token}"><input name=continue value="/device">
<input name=username value="{attacker.username}"><input name=password value="{PASSWORD}"></form>
<script>document.getElementById('f').submit()</script>""".encode()

    tab.page.goto(f"{live_server.url}/device")  # the victim has a form cookie of their own
    tab.page.goto(f"http://{attacker_host}:{loopback.port}/attack")
    expect(tab.page.locator("#message-title")).to_have_text("Sign-in refused")
    tab.page.goto(f"{live_server.url}/device")
    expect(tab.page.locator("#login-form")).to_be_visible()
    cookies = {cookie["name"] for cookie in tab.page.context.cookies(live_server.url)}
    assert "hs_login" not in cookies
