"""The hosted login page (SPEC §12): the dashboard's Content-Security-Policy, no script, a form no other
site can submit (login CSRF), no open redirect, the lockout of §4 counted together with the API's, and
a login that is a session like any other."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from account_manager.routes.dashboard import CONTENT_SECURITY_POLICY
from shared import tables
from shared.context import Context
from tests.account_manager.flows import (
    APP_REDIRECT,
    BROWSER_IP,
    ISSUER,
    PASSWORD,
    Browser,
    form_fields,
    new_verifier,
)
from tests.account_manager.test_authorization_code import authorize_url
from tests.conftest import Users, bearer


def directives(header: str) -> dict[str, str]:
    return {name: value for name, _, value in (part.strip().partition(" ") for part in header.split(";"))}


async def login_page(browser: Browser, app_client: dict[str, Any]) -> httpx.Response:
    page = await browser.get(authorize_url(app_client["client_id"], verifier=new_verifier()))
    assert page.status_code == 200 and "login-form" in page.text, page.text
    return page


async def test_the_login_page_has_the_dashboards_policy_and_may_end_only_at_the_redirect_uri(
    browser: Browser, app_client: dict[str, Any]
) -> None:
    page = await login_page(browser, app_client)
    ours, dashboards = directives(page.headers["content-security-policy"]), directives(CONTENT_SECURITY_POLICY)
    assert ours.pop("form-action") == "'self' http://127.0.0.1:43817"
    dashboards.pop("form-action")
    assert ours == dashboards
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text.lower() and " style=" not in page.text.lower()


async def test_the_device_page_has_the_dashboards_policy(browser: Browser) -> None:
    page = await browser.get("/device")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "<script" not in page.text.lower()


async def test_the_form_cookie_is_httponly_and_strict(browser: Browser, app_client: dict[str, Any]) -> None:
    page = await login_page(browser, app_client)
    cookie = page.headers["set-cookie"].lower()
    assert cookie.startswith("hs_form=") and "httponly" in cookie and "samesite=strict" in cookie


async def test_signing_in_sets_a_lax_httponly_login_cookie_and_opens_a_session(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user, tokens = await users.new()
    done = await browser.sign_in(await login_page(browser, app_client), user["username"])
    assert done.status_code == 303
    cookie = done.headers["set-cookie"].lower()
    assert cookie.startswith("hs_login=") and "httponly" in cookie and "samesite=lax" in cookie
    sessions = (await client.get("/v1/auth/sessions", headers=bearer(tokens))).json()
    assert len(sessions) == 2 and {s["ip"] for s in sessions} >= {BROWSER_IP}


async def test_a_login_session_ended_elsewhere_signs_the_browser_out(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user, tokens = await users.new()
    await browser.sign_in(await login_page(browser, app_client), user["username"])
    assert (await browser.get(authorize_url(app_client["client_id"], verifier=new_verifier()))).status_code == 302
    assert (await client.post("/v1/auth/logout-all", headers=bearer(tokens))).status_code == 204
    again = await browser.get(authorize_url(app_client["client_id"], verifier=new_verifier()))
    assert again.status_code == 200 and "login-form" in again.text


async def test_signing_out_on_the_hosted_page_ends_its_session(
    users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    await browser.sign_in(await login_page(browser, app_client), user["username"])
    device = await browser.get("/device")
    out = await browser.post_form("/v1/oauth/logout", {"csrf": form_fields(device.text)["csrf"]})
    assert out.status_code == 200
    assert "login-form" in (await browser.get("/device")).text


# --- login CSRF -----------------------------------------------------------------------------------------


async def test_a_login_form_posted_from_another_site_is_refused(
    users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    """An attacker's page that makes the victim's browser sign in as the attacker: the browser names
    the attacker's origin, and carries no form cookie (SameSite=Strict) to match a token to."""
    attacker = await users.register()
    fields = form_fields((await login_page(browser, app_client)).text)
    forged = {
        "csrf": fields["csrf"],
        "continue": fields["continue"],
        "username": attacker["username"],
        "password": PASSWORD,
    }
    cross_site = await browser.post_form("/v1/oauth/login", forged, origin="https://evil.example")
    assert cross_site.status_code == 403 and "hs_login" not in cross_site.headers.get("set-cookie", "")
    fetch_site = await browser.http.post("/v1/oauth/login", data=forged, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch_site.status_code == 403
    assert "login-form" in (await browser.get("/device")).text  # still signed out


@pytest.mark.parametrize("csrf", ["", "0" * 64, None])
async def test_a_login_form_without_its_token_is_refused(
    users: Users, browser: Browser, app_client: dict[str, Any], csrf: str | None
) -> None:
    attacker = await users.register()
    fields = form_fields((await login_page(browser, app_client)).text)
    data = {"continue": fields["continue"], "username": attacker["username"], "password": PASSWORD}
    if csrf is not None:
        data["csrf"] = csrf
    assert (await browser.post_form("/v1/oauth/login", data)).status_code == 403


async def test_a_login_form_without_the_form_cookie_is_refused(
    app: FastAPI, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    attacker = await users.register()
    fields = form_fields((await login_page(browser, app_client)).text)
    victim = Browser(app)  # another browser: the token was made for the attacker's cookie
    data = {
        "csrf": fields["csrf"],
        "continue": fields["continue"],
        "username": attacker["username"],
        "password": PASSWORD,
    }
    assert (await victim.post_form("/v1/oauth/login", data)).status_code == 403
    await victim.close()


# --- open redirects -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "continue_to",
    [
        "https://evil.example/",
        "//evil.example/v1/oauth/authorize?x",
        "/\\evil.example",
        "/device/../../evil",
        "/v1/oauth/authorizex?y",
        "/admin",
        "/device?x=1\r\nSet-Cookie: a=b",
        "",
    ],
)
async def test_the_login_form_continues_only_to_our_own_pages(
    users: Users, browser: Browser, app_client: dict[str, Any], continue_to: str
) -> None:
    user = await users.register()
    fields = form_fields((await login_page(browser, app_client)).text)
    data = {"csrf": fields["csrf"], "continue": continue_to, "username": user["username"], "password": PASSWORD}
    response = await browser.post_form("/v1/oauth/login", data)
    assert response.status_code == 400 and "location" not in response.headers


# --- the lockout of §4 ----------------------------------------------------------------------------------


async def test_wrong_passwords_on_the_hosted_page_lock_out_like_the_api(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    page = await login_page(browser, app_client)
    for _ in range(5):
        wrong = await browser.sign_in(page, user["username"], "wrong password!")
        assert wrong.status_code == 400 and "wrong" in wrong.text
        assert "Lamp app" in wrong.text  # the page is shown again for the same client
    locked = await browser.sign_in(page, user["username"], PASSWORD)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    # One count for both doors: the API refuses the same username from the same address.
    refused = await browser.http.post("/v1/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert refused.status_code == 429
    # The owner from another address is not locked out.
    assert (
        await client.post("/v1/auth/login", json={"username": user["username"], "password": PASSWORD})
    ).status_code == 200
    async with ctx.db.read() as tx:
        kinds = (
            (await tx.execute(sa.select(tables.events.c.type).where(tables.events.c.ip == BROWSER_IP))).scalars().all()
        )
    assert kinds.count("login_failed") == 5 and "login_locked" in kinds


async def test_a_disabled_account_is_told_so_on_the_hosted_page(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    _, admin = await users.admin(ctx)
    await client.patch(f"/v1/admin/users/{user['id']}", json={"disabled": True}, headers=bearer(admin))
    refused = await browser.sign_in(await login_page(browser, app_client), user["username"])
    assert refused.status_code == 403 and "disabled" in refused.text


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "response_type=code",
        "client_id=" + "x" * 5000,
        "response_type=code&client_id=%FF%FE&state=s",
        "response_type=code&client_id=a&redirect_uri=%22%3E%3Cscript%3E",
    ],
)
async def test_a_malformed_authorization_request_is_a_4xx_page(browser: Browser, query: str) -> None:
    response = await browser.get(f"/v1/oauth/authorize?{query}")
    assert 400 <= response.status_code < 500 and "location" not in response.headers
    assert "<script>" not in response.text


async def test_a_huge_state_is_sent_back_as_invalid_request(browser: Browser, app_client: dict[str, Any]) -> None:
    response = await browser.get(authorize_url(app_client["client_id"], verifier=new_verifier(), state="s" * 2000))
    assert response.status_code == 302 and response.headers["location"].startswith(APP_REDIRECT)
    assert "error=invalid_request" in response.headers["location"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"username=a&password=b", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00", "application/x-www-form-urlencoded"),
        (b"[1, 2]", "application/json"),
        (b"{", "application/json"),
    ],
)
async def test_a_malformed_login_post_is_a_4xx_page(browser: Browser, content: bytes, content_type: str) -> None:
    response = await browser.http.post(
        "/v1/oauth/login", content=content, headers={"Content-Type": content_type, "Origin": ISSUER}
    )
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    "body",
    [
        {"grant_type": "authorization_code"},
        {"grant_type": "authorization_code", "client_id": 5, "code": "x"},
        {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"},
        {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": ["a"]},
    ],
)
async def test_a_malformed_token_request_is_a_4xx(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/v1/auth/token", json=body)
    assert 400 <= response.status_code < 500 and set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("header", ["Basic /w==", "Basic !!!", "Basic " + "A" * 9000, "Basic Zm9v"])
async def test_a_garbled_basic_header_is_a_4xx(client: httpx.AsyncClient, header: str) -> None:
    data = {"grant_type": "authorization_code", "code": "x", "redirect_uri": APP_REDIRECT}
    response = await client.post("/v1/auth/token", data=data, headers={"Authorization": header})
    assert 400 <= response.status_code < 500, response.text
