"""The dashboard's second factor (SPEC §12) in headless Chromium, under the default that admin and
support must have one: an admin without a factor is walked through enrolment (secret and otpauth URI as
text, a code, the recovery codes once) and lands on the dashboard; one with a factor is asked for a code
after the password."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from playwright.sync_api import expect

from tests.conftest import Backend, make_settings
from tests.dashboard.conftest import PASSWORD, Account, LiveServer, Tab, new_tab, reset_database


@pytest.fixture
def live_server(backend: Backend, tmp_path: Path) -> Iterator[LiveServer]:
    # The default, which the rest of the suite turns off.
    settings = make_settings(backend, tmp_path, mfa_required_roles=["admin", "support"])
    reset_database(settings)
    server = LiveServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tab(browser: Any, live_server: LiveServer) -> Iterator[Tab]:
    with new_tab(browser, live_server.url) as opened:
        yield opened


def unexpected(errors: list[str]) -> list[str]:
    """Script errors, not the refusals these tests ask for (a wrong code is a 400 or a 401, a malformed one a 422, and the
    page learns that an account must enrol from a 403), which Chromium logs as console errors."""
    refusal = re.compile(r"console: Failed to load resource: the server responded with a status of (40[013]|422)")
    return [error for error in errors if not refusal.match(error)]


def steady() -> None:
    """Out of the last seconds of a 30 s step: a code typed now is still of this step on arrival."""
    into = time.time() % 30
    if into > 26:
        time.sleep(30 - into + 0.1)


def enrol_by_api(server: LiveServer, account: Account) -> str:
    """The factor set up the way an app does it; confirmed with the previous step's code, so the
    current step's is left for the browser."""
    login = httpx.post(f"{server.url}/v1/auth/login", json={"username": account.username, "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    secret = httpx.post(f"{server.url}/v1/users/me/mfa/totp", headers=headers).json()["secret"]
    steady()
    previous = pyotp.TOTP(secret).at(time.time() - 30)
    confirmed = httpx.post(f"{server.url}/v1/users/me/mfa/totp/confirm", json={"code": previous}, headers=headers)
    assert confirmed.status_code == 200, confirmed.text
    return str(secret)


def test_an_admin_without_a_factor_is_walked_through_enrolment(
    tab: Tab, live_server: LiveServer, tmp_path: Path
) -> None:
    admin = live_server.staff("admin")
    tab.open()
    tab.sign_in(admin)
    page = tab.page
    expect(page.locator("#enrol-view")).to_be_visible()
    expect(page.locator("#dashboard-view")).to_be_hidden()
    expect(page.locator("#enrol-secret")).to_have_text(re.compile(r"^[A-Z2-7]{32}$"))
    secret = page.locator("#enrol-secret").inner_text()
    uri = pyotp.parse_uri(page.locator("#enrol-uri").inner_text())
    assert isinstance(uri, pyotp.TOTP) and uri.secret == secret and uri.name == admin.username
    tab.screenshot(tmp_path / "enrol.png")

    page.fill("#enrol-code", "000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    page.click("#enrol-confirm")
    expect(page.locator("#enrol-error")).to_be_visible()
    steady()
    page.fill("#enrol-code", pyotp.TOTP(secret).now())
    page.click("#enrol-confirm")
    codes = page.locator("#enrol-codes li")
    expect(codes).to_have_count(10)
    expect(page.locator("#enrol-secret")).to_have_text("")  # the secret is off the page
    tab.screenshot(tmp_path / "recovery-codes.png")
    page.click("#enrol-done")
    expect(page.locator("#dashboard-view")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#enrol-codes li")).to_have_count(0)
    me = httpx.get(f"{live_server.url}/v1/admin/users?query={admin.username}", headers=live_server_admin(live_server))
    assert me.json()[0]["mfa_enabled"] is True
    assert unexpected(tab.errors) == []


def live_server_admin(server: LiveServer) -> dict[str, str]:
    """Headers of another admin with a full session: enrolled, then refreshed."""
    other = server.staff("admin")
    login = httpx.post(f"{server.url}/v1/auth/login", json={"username": other.username, "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    secret = httpx.post(f"{server.url}/v1/users/me/mfa/totp", headers=headers).json()["secret"]
    steady()
    httpx.post(f"{server.url}/v1/users/me/mfa/totp/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=headers)
    refreshed = httpx.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": login.json()["refresh_token"]})
    return {"Authorization": f"Bearer {refreshed.json()['access_token']}"}


def test_an_admin_with_a_factor_signs_in_with_a_code(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    admin = live_server.staff("admin")
    secret = enrol_by_api(live_server, admin)
    tab.open()
    tab.sign_in(admin)
    page = tab.page
    expect(page.locator("#login-code-step")).to_be_visible()
    expect(page.locator("#login-password-step")).to_be_hidden()
    tab.screenshot(tmp_path / "code-step.png")
    page.fill("#login-code", "12345")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("not a code")
    wrong = next(
        f"{n:06d}"
        for n in range(10)
        if f"{n:06d}" not in {pyotp.TOTP(secret).at(time.time() + d) for d in (-30, 0, 30)}
    )
    page.fill("#login-code", wrong)
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("wrong")
    steady()
    page.fill("#login-code", pyotp.TOTP(secret).now())
    page.click("#login-submit")
    expect(page.locator("#dashboard-view")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#me-name")).to_have_text(admin.username)
    assert unexpected(tab.errors) == []


def test_a_recovery_code_signs_in_on_the_dashboard(tab: Tab, live_server: LiveServer) -> None:
    support = live_server.staff("support")
    login = httpx.post(f"{live_server.url}/v1/auth/login", json={"username": support.username, "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    secret = httpx.post(f"{live_server.url}/v1/users/me/mfa/totp", headers=headers).json()["secret"]
    steady()
    confirm_url = f"{live_server.url}/v1/users/me/mfa/totp/confirm"
    codes = httpx.post(confirm_url, json={"code": pyotp.TOTP(secret).now()}, headers=headers).json()["recovery_codes"]
    tab.open()
    tab.sign_in(support)
    page = tab.page
    expect(page.locator("#login-code-step")).to_be_visible()
    page.fill("#login-code", codes[0])
    page.click("#login-submit")
    expect(page.locator("#dashboard-view")).to_be_visible()
    expect(page.locator("#me-role")).to_have_text("support")
    assert unexpected(tab.errors) == []
