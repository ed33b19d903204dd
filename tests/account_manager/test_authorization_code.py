"""The authorization code grant with PKCE (SPEC §12; RFC 6749 §4.1, RFC 7636, RFC 8252), driven by
Authlib's OAuth 2 client as an app and by a browser on the hosted login page: the happy path ends in
the session a password login makes, and every RFC error case is answered as the RFCs say."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from shared import tables
from shared.clock import utcnow
from shared.context import Context
from tests.account_manager.flows import (
    APP_REDIRECT,
    AUTHORIZE_URL,
    ISSUER,
    REGISTERED,
    TOKEN_URL,
    Browser,
    new_state,
    new_verifier,
    oauth_client,
    query_of,
    register_client,
)
from tests.conftest import Users, assert_error, bearer


def authorize_url(client_id: str, *, verifier: str | None = None, state: str | None = "s", **extra: str) -> str:
    params: dict[str, str] = {"response_type": "code", "client_id": client_id, "redirect_uri": APP_REDIRECT}
    if state is not None:
        params["state"] = state
    if verifier is not None:
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        params |= {"code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256"}
    params |= extra
    return str(httpx.URL(AUTHORIZE_URL, params=params))


async def code_for(browser: Browser, client_id: str, username: str, verifier: str, **extra: str) -> str:
    location = await browser.authorize(authorize_url(client_id, verifier=verifier, **extra), username)
    assert location.startswith(APP_REDIRECT + "?"), location
    return query_of(location)["code"]


async def redeem(
    client: httpx.AsyncClient, client_id: str, code: str, verifier: str | None, **extra: str
) -> httpx.Response:
    body = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": APP_REDIRECT}
    if verifier is not None:
        body["code_verifier"] = verifier
    return await client.post("/v1/auth/token", data={**body, **extra})


# --- the flow, end to end ---------------------------------------------------------------------------


async def test_code_flow_with_pkce_ends_in_a_session_like_a_password_login(
    app: FastAPI, client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    app_oauth = oauth_client(app, app_client["client_id"])
    verifier = new_verifier()
    url, _ = app_oauth.create_authorization_url(AUTHORIZE_URL, code_verifier=verifier)
    location = await browser.authorize(url, user["username"])
    token = await app_oauth.fetch_token(TOKEN_URL, authorization_response=location, code_verifier=verifier)

    assert set(token) >= {"access_token", "refresh_token", "expires_in", "refresh_expires_in", "token_type"}
    assert token["token_type"] == "Bearer" and token["refresh_token"].startswith("hsr_")
    header, claims = (
        jwt.get_unverified_header(token["access_token"]),
        jwt.decode(token["access_token"], options={"verify_signature": False}),
    )
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == ISSUER and claims["sub"] == user["id"] and claims["role"] == "user"
    assert claims["client_id"] == app_client["client_id"] and claims["sid"]
    me = await client.get("/v1/users/me", headers=bearer(token["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == user["id"]
    # The session rotates its refresh token as any other (the app's own client does the refresh).
    refreshed = await app_oauth.refresh_token(TOKEN_URL, refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert (
        jwt.decode(refreshed["access_token"], options={"verify_signature": False})["client_id"]
        == app_client["client_id"]
    )
    listed = await client.get("/v1/auth/sessions", headers=bearer(refreshed["access_token"]))
    assert claims["sid"] in {row["id"] for row in listed.json()}
    await app_oauth.aclose()


async def test_state_comes_back_unchanged(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    state = "opaque/value with spaces & symbols=" + new_state()
    location = await browser.authorize(
        authorize_url(app_client["client_id"], verifier=new_verifier(), state=state), user["username"]
    )
    assert query_of(location)["state"] == state


async def test_a_signed_in_browser_gets_a_code_without_the_login_page(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    await code_for(browser, app_client["client_id"], user["username"], new_verifier())
    again = await browser.get(authorize_url(app_client["client_id"], verifier=new_verifier()))
    assert again.status_code == 302 and "code=" in again.headers["location"]


async def test_the_code_redemption_records_a_login_for_the_client(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    verifier = new_verifier()
    code = await code_for(browser, app_client["client_id"], user["username"], verifier)
    assert (await redeem(client, app_client["client_id"], code, verifier)).status_code == 200
    async with ctx.db.read() as tx:
        rows = (await tx.execute(sa.select(tables.events).where(tables.events.c.actor_id == user["id"]))).all()
    details = [row.detail for row in rows if row.type == "login_succeeded"]
    assert {"via": "hosted_page"} in [{"via": d.get("via")} for d in details]
    assert {"grant": "authorization_code", "client_id": app_client["client_id"]} in details


# --- RFC error cases at the token endpoint ------------------------------------------------------------


async def test_a_wrong_code_verifier_is_invalid_grant(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    code = await code_for(browser, app_client["client_id"], user["username"], new_verifier())
    assert_error(await redeem(client, app_client["client_id"], code, new_verifier()), 400, "invalid_grant")


async def test_a_public_client_without_a_code_verifier_is_invalid_request(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    code = await code_for(browser, app_client["client_id"], user["username"], new_verifier())
    assert_error(await redeem(client, app_client["client_id"], code, None), 400, "invalid_request")


async def test_a_wrong_redirect_uri_at_the_token_endpoint_is_invalid_grant(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    verifier = new_verifier()
    code = await code_for(browser, app_client["client_id"], user["username"], verifier)
    other = await redeem(client, app_client["client_id"], code, verifier, redirect_uri="http://127.0.0.1:1/callback")
    assert_error(other, 400, "invalid_grant")


async def test_an_expired_code_is_invalid_grant(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    verifier = new_verifier()
    code = await code_for(browser, app_client["client_id"], user["username"], verifier)
    async with ctx.db.write() as tx:
        await tx.execute(sa.update(tables.oauth_codes).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert_error(await redeem(client, app_client["client_id"], code, verifier), 400, "invalid_grant")


async def test_codes_live_at_most_60_seconds(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    await code_for(browser, app_client["client_id"], user["username"], new_verifier())
    async with ctx.db.read() as tx:
        row = (await tx.execute(sa.select(tables.oauth_codes))).one()
    assert row.expires_at - row.created_at <= timedelta(seconds=60)


async def test_a_reused_code_is_invalid_grant_and_revokes_the_session_it_issued(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    verifier = new_verifier()
    code = await code_for(browser, app_client["client_id"], user["username"], verifier)
    first = await redeem(client, app_client["client_id"], code, verifier)
    assert first.status_code == 200, first.text
    assert (await client.get("/v1/users/me", headers=bearer(first.json()))).status_code == 200
    assert_error(await redeem(client, app_client["client_id"], code, verifier), 400, "invalid_grant")
    assert_error(await client.get("/v1/users/me", headers=bearer(first.json())), 401, "invalid_token")
    refresh = await client.post("/v1/auth/refresh", json={"refresh_token": first.json()["refresh_token"]})
    assert_error(refresh, 401, "invalid_grant")
    async with ctx.db.read() as tx:
        kinds = (await tx.execute(sa.select(tables.events.c.type))).scalars().all()
    assert "authorization_code_reused" in kinds


async def test_an_unknown_code_is_invalid_grant(client: httpx.AsyncClient, app_client: dict[str, Any]) -> None:
    assert_error(await redeem(client, app_client["client_id"], "no-such-code", new_verifier()), 400, "invalid_grant")


async def test_a_code_of_another_client_is_invalid_grant(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    other = await register_client(client, ctx, users, name="Other app")
    user = await users.register()
    verifier = new_verifier()
    code = await code_for(browser, app_client["client_id"], user["username"], verifier)
    assert_error(await redeem(client, other["client_id"], code, verifier), 400, "invalid_grant")
    assert (await redeem(client, app_client["client_id"], code, verifier)).status_code == 200


async def test_an_unknown_client_at_the_token_endpoint_is_invalid_client(client: httpx.AsyncClient) -> None:
    assert_error(await redeem(client, "no-such-client", "code", new_verifier()), 400, "invalid_client")


async def test_a_code_of_a_session_ended_before_redemption_is_invalid_grant(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user, tokens = await users.new()
    verifier = new_verifier()
    code = await code_for(browser, app_client["client_id"], user["username"], verifier)
    assert (await client.post("/v1/auth/logout-all", headers=bearer(tokens))).status_code == 204
    assert_error(await redeem(client, app_client["client_id"], code, verifier), 400, "invalid_grant")


# --- confidential clients -----------------------------------------------------------------------------


async def test_a_confidential_client_redeems_with_its_secret_and_not_without(
    app: FastAPI, client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser
) -> None:
    server = await register_client(client, ctx, users, name="Web back end", type="confidential")
    user = await users.register()
    location = await browser.authorize(authorize_url(server["client_id"]), user["username"])
    code = query_of(location)["code"]
    without = await redeem(client, server["client_id"], code, None)
    assert_error(without, 401, "invalid_client")
    wrong = await client.post(
        "/v1/auth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT},
        auth=(server["client_id"], "hcs_wrong"),
    )
    assert_error(wrong, 401, "invalid_client")
    app_oauth = oauth_client(app, server["client_id"], client_secret=server["client_secret"])
    token = await app_oauth.fetch_token(TOKEN_URL, authorization_response=location)
    assert token["access_token"]
    await app_oauth.aclose()


# --- RFC error cases at the authorization endpoint ------------------------------------------------------


async def test_missing_state_is_invalid_request_sent_back_to_the_client(
    users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    response = await browser.get(authorize_url(app_client["client_id"], verifier=new_verifier(), state=None))
    assert response.status_code == 302
    assert response.headers["location"].startswith(APP_REDIRECT + "?")
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_a_public_client_without_pkce_is_sent_back_invalid_request_with_its_state(
    browser: Browser, app_client: dict[str, Any]
) -> None:
    response = await browser.get(authorize_url(app_client["client_id"], state="xyz"))
    assert response.status_code == 302
    assert query_of(response.headers["location"]) | {"error_description": ""} == {
        "error": "invalid_request",
        "error_description": "",
        "state": "xyz",
    }


@pytest.mark.parametrize("method", ["plain", "S512", ""])
async def test_a_code_challenge_method_other_than_s256_is_refused(
    browser: Browser, app_client: dict[str, Any], method: str
) -> None:
    url = authorize_url(app_client["client_id"], code_challenge="a" * 43, code_challenge_method=method)
    response = await browser.get(url)
    assert response.status_code == 302
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_response_type_token_is_unsupported_response_type(browser: Browser, app_client: dict[str, Any]) -> None:
    response = await browser.get(authorize_url(app_client["client_id"], verifier=new_verifier(), response_type="token"))
    assert response.status_code == 302
    assert query_of(response.headers["location"])["error"] == "unsupported_response_type"


async def test_a_repeated_parameter_is_an_error_page(browser: Browser, app_client: dict[str, Any]) -> None:
    # RFC 6749 §3.1: parameters are sent once. Which of two redirect URIs (or states) would be the
    # client's own cannot be told, so the error stays on our page.
    url = authorize_url(app_client["client_id"], verifier=new_verifier()) + "&state=second"
    response = await browser.get(url)
    assert response.status_code == 400 and "location" not in response.headers


async def test_a_client_not_registered_for_the_code_grant_is_unauthorized_client(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser
) -> None:
    hub = await register_client(
        client, ctx, users, name="Hub", grant_types=["urn:ietf:params:oauth:grant-type:device_code"]
    )
    response = await browser.get(authorize_url(hub["client_id"], verifier=new_verifier()))
    assert response.status_code == 302
    assert query_of(response.headers["location"])["error"] == "unauthorized_client"


async def test_an_unknown_client_gets_an_error_page_and_no_redirect(browser: Browser) -> None:
    response = await browser.get(authorize_url("no-such-client", verifier=new_verifier()))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "text/html" in response.headers["content-type"]


OPEN_REDIRECTS = [
    "https://evil.example/callback",
    "http://127.0.0.1.evil.example/callback",
    "http://127.0.0.1@evil.example/callback",
    "http://127.0.0.1:80@evil.example/callback",
    "http://evil.example/callback?x=http://127.0.0.1/callback",
    "http://127.0.0.1/callback/../../evil",
    "http://127.0.0.1/callbackx",
    "http://127.0.0.1/callback?next=https://evil.example",
    "http://127.0.0.1/callback#frag",
    "http://localhost/callback",
    "HTTP://127.0.0.1/callback",
    "//evil.example/callback",
    "javascript:alert(1)//127.0.0.1/callback",
    "http://127.0.0.1\\@evil.example/callback",
    'http://127.0.0.1/callback"onload="x',
    "http://127.0.0.1/callbäck",
]


@pytest.mark.parametrize("redirect_uri", OPEN_REDIRECTS)
async def test_an_unregistered_redirect_uri_is_an_error_page_never_a_redirect(
    browser: Browser, app_client: dict[str, Any], redirect_uri: str
) -> None:
    url = authorize_url(app_client["client_id"], verifier=new_verifier(), redirect_uri=redirect_uri)
    response = await browser.get(url)
    assert response.status_code == 400, response.text
    assert "location" not in response.headers


async def test_a_registered_loopback_uri_matches_on_any_port_only(
    client: httpx.AsyncClient, users: Users, browser: Browser, app_client: dict[str, Any]
) -> None:
    user = await users.register()
    for port in (1, 8080, 65535):
        redirect = f"http://127.0.0.1:{port}/callback"
        location = await browser.authorize(
            authorize_url(app_client["client_id"], verifier=new_verifier(), redirect_uri=redirect), user["username"]
        )
        assert location.startswith(redirect + "?")
    assert REGISTERED == "http://127.0.0.1/callback"


async def test_a_custom_scheme_is_matched_exactly(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser
) -> None:
    mobile = await register_client(
        client, ctx, users, name="Mobile", redirect_uris=["com.example.lamp:/oauth2redirect"]
    )
    user = await users.register()
    good = authorize_url(mobile["client_id"], verifier=new_verifier(), redirect_uri="com.example.lamp:/oauth2redirect")
    assert (await browser.authorize(good, user["username"])).startswith("com.example.lamp:/oauth2redirect?code=")
    for other in ("com.example.lamp:/other", "com.example.lamp://oauth2redirect", "com.example.evil:/oauth2redirect"):
        bad = authorize_url(mobile["client_id"], verifier=new_verifier(), redirect_uri=other)
        assert (await browser.get(bad)).status_code == 400


# --- discovery ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"])
async def test_discovery_names_the_oauth_endpoints_grants_and_s256(client: httpx.AsyncClient, path: str) -> None:
    document = (await client.get(path)).json()
    assert document["authorization_endpoint"] == f"{ISSUER}/v1/oauth/authorize"
    assert document["device_authorization_endpoint"] == f"{ISSUER}/v1/oauth/device_authorization"
    assert document["token_endpoint"] == f"{ISSUER}/v1/auth/token"
    assert set(document["grant_types_supported"]) >= {
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
    }
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert set(document["token_endpoint_auth_methods_supported"]) == {
        "none",
        "client_secret_basic",
        "client_secret_post",
    }
