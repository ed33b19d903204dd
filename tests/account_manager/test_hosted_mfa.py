"""The hosted login page's second step (SPEC §12): a user with a factor gets a code form after the
password, under the same policy and anti-forgery rules; a wrong code keeps them on it; a right code or
a recovery code ends the authorization request at the app, whose tokens then need no further code."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from tests.account_manager.flows import (
    AUTHORIZE_URL,
    TOKEN_URL,
    Browser,
    form_fields,
    new_verifier,
    oauth_client,
)
from tests.account_manager.mfa_helpers import code, enrol, wrong_code
from tests.conftest import Users, bearer


async def code_form(browser: Browser, url: str, username: str) -> httpx.Response:
    page = await browser.get(url)
    assert "login-form" in page.text, page.text
    form = await browser.sign_in(page, username)
    assert form.status_code == 200 and "mfa-form" in form.text, form.text
    return form


async def send_code(browser: Browser, form: httpx.Response, typed: str) -> httpx.Response:
    fields = form_fields(form.text)
    data = {key: fields[key] for key in ("csrf", "continue", "mfa_token")} | {"code": typed}
    return await browser.post_form("/v1/oauth/login/mfa", data)


async def test_the_code_flow_asks_a_user_with_a_factor_for_a_code(
    app: FastAPI, client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    app_oauth = oauth_client(app, app_client["client_id"])
    verifier = new_verifier()
    url, _ = app_oauth.create_authorization_url(AUTHORIZE_URL, code_verifier=verifier)
    form = await code_form(browser, url, user["username"])
    assert "form-action 'self' http://127.0.0.1:43817" in form.headers["content-security-policy"]
    assert "<script" not in form.text.lower() and "hs_login" not in form.headers.get("set-cookie", "")

    wrong = await send_code(browser, form, wrong_code(factor.secret))
    assert wrong.status_code == 400 and 'id="login-error"' in wrong.text and "mfa-form" in wrong.text

    done = await send_code(browser, wrong, code(factor.secret))
    assert done.status_code == 303, done.text
    assert "hs_login=" in done.headers["set-cookie"]
    back = await browser.get(done.headers["location"])
    assert back.status_code == 302, back.text
    token = await app_oauth.fetch_token(
        TOKEN_URL, authorization_response=back.headers["location"], code_verifier=verifier
    )
    me = await client.get("/v1/users/me", headers=bearer(token["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == user["id"]
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": token["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text


async def test_a_recovery_code_in_the_code_box_signs_in_once(
    app: FastAPI, client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    app_oauth = oauth_client(app, app_client["client_id"])
    url, _ = app_oauth.create_authorization_url(AUTHORIZE_URL, code_verifier=new_verifier())
    form = await code_form(browser, url, user["username"])
    assert (await send_code(browser, form, factor.recovery_codes[0])).status_code == 303
    other = Browser(app)
    try:
        again = await code_form(other, url, user["username"])
        refused = await send_code(other, again, factor.recovery_codes[0])
        assert refused.status_code == 400 and "mfa-form" in refused.text
    finally:
        await other.close()


async def test_the_code_form_refuses_a_post_from_another_site_and_a_used_token(
    app: FastAPI, client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    app_oauth = oauth_client(app, app_client["client_id"])
    url, _ = app_oauth.create_authorization_url(AUTHORIZE_URL, code_verifier=new_verifier())
    form = await code_form(browser, url, user["username"])
    fields = form_fields(form.text)
    data = {key: fields[key] for key in ("csrf", "continue", "mfa_token")} | {"code": code(factor.secret)}
    forged = await browser.post_form("/v1/oauth/login/mfa", data, origin="https://evil.example")
    assert forged.status_code == 403
    assert (await browser.post_form("/v1/oauth/login/mfa", data)).status_code == 303
    replay = await browser.post_form("/v1/oauth/login/mfa", data)
    assert replay.status_code == 400 and "login-form" in replay.text  # back to the password


async def test_bad_code_forms_are_a_clear_4xx(browser: Browser, app_client: dict[str, Any], app: FastAPI) -> None:
    app_oauth = oauth_client(app, app_client["client_id"])
    url, _ = app_oauth.create_authorization_url(AUTHORIZE_URL, code_verifier=new_verifier())
    page = await browser.get(url)
    fields = form_fields(page.text)
    base = {"csrf": fields["csrf"], "continue": fields["continue"]}
    for extra in (
        {},
        {"mfa_token": "hsm_x"},
        {"mfa_token": "hsm_x", "code": "12"},
        {"mfa_token": "x" * 9000, "code": "1"},
    ):
        response = await browser.post_form("/v1/oauth/login/mfa", base | extra)
        assert 400 <= response.status_code < 500, response.text
    assert (await browser.post_form("/v1/oauth/login/mfa", {"continue": "https://evil.example"})).status_code == 403
