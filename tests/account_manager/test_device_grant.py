"""The device authorization grant (SPEC §12, RFC 8628): a hub built on Authlib's OAuth 2 client asks for
codes and polls; a user signed in on the hosted page approves at /device. Polling answers as the RFC
says (authorization_pending, slow_down, access_denied, expired_token), and user codes are easy to type
and rate-limited."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from authlib.integrations.base_client.errors import OAuthError
from fastapi import FastAPI

from account_manager import device_codes
from account_manager.device_codes import REQUESTS_PER_MINUTE, rate_limit_requests, save_device_code
from shared import tables
from shared.clock import utcnow
from shared.context import Context
from shared.errors import RateLimitedError
from tests.account_manager.flows import (
    DEVICE_GRANT,
    DEVICE_URL,
    ISSUER,
    TOKEN_URL,
    Browser,
    form_fields,
    oauth_client,
    register_client,
)
from tests.conftest import Users, assert_error, bearer

USER_CODE = re.compile(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}")


@pytest.fixture
async def hub(client: httpx.AsyncClient, ctx: Context, users: Users) -> dict[str, Any]:
    return await register_client(
        client, ctx, users, name="Living-room hub", redirect_uris=[], grant_types=[DEVICE_GRANT]
    )


async def signed_in(browser: Browser, users: Users) -> dict[str, Any]:
    user = await users.register()
    page = await browser.get("/device")
    assert page.status_code == 200 and "login-form" in page.text
    done = await browser.sign_in(page, user["username"])
    assert done.status_code == 303 and done.headers["location"] == "/device", done.text
    return user


async def start(client: httpx.AsyncClient, client_id: str) -> dict[str, Any]:
    response = await client.post("/v1/oauth/device_authorization", data={"client_id": client_id})
    assert response.status_code == 200, response.text
    started: dict[str, Any] = response.json()
    return started


async def poll(client: httpx.AsyncClient, client_id: str, device_code: str) -> httpx.Response:
    return await client.post(
        "/v1/auth/token", data={"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": client_id}
    )


async def forget_last_poll(ctx: Context) -> None:
    """As if the hub had waited its interval since its last poll."""
    async with ctx.db.write() as tx:
        await tx.execute(sa.update(tables.oauth_device_codes).values(last_polled_at=None))


async def test_a_hub_logs_a_user_in_with_the_device_grant(
    app: FastAPI, client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    hub_oauth = oauth_client(app, hub["client_id"])
    asked = await hub_oauth.request("POST", DEVICE_URL, data={"client_id": hub["client_id"]}, withhold_token=True)
    started = asked.json()
    assert USER_CODE.fullmatch(started["user_code"]), started
    assert started["verification_uri"] == f"{ISSUER}/device"
    assert started["verification_uri_complete"] == f"{ISSUER}/device?user_code={started['user_code']}"
    assert started["expires_in"] == 600 and started["interval"] == 5

    with pytest.raises(OAuthError) as pending:
        await hub_oauth.fetch_token(TOKEN_URL, grant_type=DEVICE_GRANT, device_code=started["device_code"])
    assert pending.value.error == "authorization_pending"

    user = await signed_in(browser, users)
    done = await browser.approve(started["user_code"])
    assert done.status_code == 200 and 'id="outcome">Device connected' in done.text, done.text

    await forget_last_poll(ctx)
    token = await hub_oauth.fetch_token(TOKEN_URL, grant_type=DEVICE_GRANT, device_code=started["device_code"])
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user["id"] and claims["client_id"] == hub["client_id"]
    assert token["refresh_token"].startswith("hsr_")
    assert (await client.get("/v1/users/me", headers=bearer(token["access_token"]))).status_code == 200
    refreshed = await hub_oauth.refresh_token(TOKEN_URL, refresh_token=token["refresh_token"])
    assert refreshed["access_token"] != token["access_token"]
    await hub_oauth.aclose()
    async with ctx.db.read() as tx:
        kinds = (await tx.execute(sa.select(tables.events.c.type, tables.events.c.detail))).all()
    assert ("device_authorization_approved", hub["client_id"]) in {(t, d.get("client_id")) for t, d in kinds}
    assert {"grant": "device_code", "client_id": hub["client_id"]} in [d for t, d in kinds if t == "login_succeeded"]


async def test_polling_before_approval_is_authorization_pending(client: httpx.AsyncClient, hub: dict[str, Any]) -> None:
    started = await start(client, hub["client_id"])
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "authorization_pending")


async def test_polling_faster_than_the_interval_is_slow_down_and_adds_5_seconds(
    client: httpx.AsyncClient, ctx: Context, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "authorization_pending")
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "slow_down")
    async with ctx.db.read() as tx:
        interval = (await tx.execute(sa.select(tables.oauth_device_codes.c.poll_interval))).scalar_one()
    assert interval == 10
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "slow_down")
    await forget_last_poll(ctx)
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "authorization_pending")


async def test_a_denied_request_is_access_denied(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    await signed_in(browser, users)
    done = await browser.approve(started["user_code"], decision="deny")
    assert 'id="outcome">Request denied' in done.text
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "access_denied")


async def test_an_expired_device_code_is_expired_token(
    client: httpx.AsyncClient, ctx: Context, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    async with ctx.db.write() as tx:
        await tx.execute(sa.update(tables.oauth_device_codes).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "expired_token")


async def test_a_device_code_is_redeemed_once(
    client: httpx.AsyncClient, ctx: Context, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    await signed_in(browser, users)
    await browser.approve(started["user_code"])
    first = await poll(client, hub["client_id"], started["device_code"])
    assert first.status_code == 200, first.text
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "invalid_grant")


async def test_an_unknown_device_code_is_invalid_grant(client: httpx.AsyncClient, hub: dict[str, Any]) -> None:
    assert_error(await poll(client, hub["client_id"], "no-such-code"), 400, "invalid_grant")


async def test_a_device_code_of_another_client_is_invalid_grant(
    client: httpx.AsyncClient, ctx: Context, users: Users, hub: dict[str, Any]
) -> None:
    other = await register_client(client, ctx, users, name="Other hub", redirect_uris=[], grant_types=[DEVICE_GRANT])
    started = await start(client, hub["client_id"])
    assert_error(await poll(client, other["client_id"], started["device_code"]), 400, "invalid_grant")


async def test_a_client_without_the_device_grant_is_unauthorized_client(
    client: httpx.AsyncClient, ctx: Context, users: Users
) -> None:
    app_only = await register_client(client, ctx, users, grant_types=["authorization_code"])
    response = await client.post("/v1/oauth/device_authorization", data={"client_id": app_only["client_id"]})
    assert_error(response, 400, "unauthorized_client")


async def test_an_unknown_client_asking_for_device_codes_is_invalid_client(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/oauth/device_authorization", data={"client_id": "nobody"})
    assert_error(response, 400, "invalid_client")


async def test_device_authorization_requests_are_rate_limited_per_address(
    client: httpx.AsyncClient, hub: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the middle of a minute: the limit counts by the minute (see the test below for its turn).
    middle = int(time.time()) // 60 * 60 + 30.0
    monkeypatch.setattr(device_codes, "time", SimpleNamespace(time=lambda: middle))
    for _ in range(REQUESTS_PER_MINUTE):
        await client.post("/v1/oauth/device_authorization", data={"client_id": hub["client_id"]})
    refused = await client.post("/v1/oauth/device_authorization", data={"client_id": hub["client_id"]})
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1


async def test_a_burst_across_the_turn_of_a_minute_is_limited_too(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [(int(time.time()) // 60 + 1) * 60 - 2.0]  # 2 s before a minute ends
    monkeypatch.setattr(device_codes, "time", SimpleNamespace(time=lambda: clock[0]))
    for _ in range(20):
        await rate_limit_requests(ctx, "198.51.100.7")
    clock[0] += 3  # 1 s into the next minute
    for _ in range(REQUESTS_PER_MINUTE - 20):
        await rate_limit_requests(ctx, "198.51.100.7")
    with pytest.raises(RateLimitedError):
        await rate_limit_requests(ctx, "198.51.100.7")
    await rate_limit_requests(ctx, "198.51.100.8")  # per address
    clock[0] += 60  # a minute after the burst: its address may ask again
    await rate_limit_requests(ctx, "198.51.100.7")


@pytest.mark.parametrize("first, gap", [(31, 0), (20, 3), (30, 1), (30, 45)])
async def test_retry_after_is_when_one_more_request_is_let_through(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, first: int, gap: int
) -> None:
    # Two addresses with the same history: `first` requests 2 s before a minute ends, then more after
    # `gap` s until one is refused. A retry one second before its Retry-After is refused (and counted), so
    # the retry exactly at it is made from the other address.
    clock = [(int(time.time()) // 60 + 1) * 60 - 2.0]
    monkeypatch.setattr(device_codes, "time", SimpleNamespace(time=lambda: clock[0]))
    early, on_time = "198.51.100.9", "198.51.100.10"
    for ip in (early, on_time):
        for _ in range(first):
            with contextlib.suppress(RateLimitedError):
                await rate_limit_requests(ctx, ip)
    clock[0] += gap
    waits = []
    for ip in (early, on_time):
        with pytest.raises(RateLimitedError) as refused:
            for _ in range(REQUESTS_PER_MINUTE + 1):
                await rate_limit_requests(ctx, ip)
        waits.append(int(refused.value.headers["Retry-After"]))
    wait = waits[0]
    assert waits == [wait, wait] and 1 <= wait <= 120
    refused_at = clock[0]
    if wait > 1:
        clock[0] = refused_at + wait - 1
        with pytest.raises(RateLimitedError):
            await rate_limit_requests(ctx, early)
    clock[0] = refused_at + wait
    await rate_limit_requests(ctx, on_time)


# --- the /device page -------------------------------------------------------------------------------


async def test_a_user_code_is_accepted_in_lower_case_and_without_its_dash(
    client: httpx.AsyncClient, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    await signed_in(browser, users)
    typed = " " + started["user_code"].replace("-", "").lower() + " "
    entry = await browser.get("/device")
    confirm = await browser.post_form("/device", {"csrf": form_fields(entry.text)["csrf"], "user_code": typed})
    assert confirm.status_code == 200 and "Living-room hub" in confirm.text
    assert form_fields(confirm.text)["user_code"] == started["user_code"]


async def test_opening_the_complete_verification_uri_approves_nothing(
    client: httpx.AsyncClient, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    await signed_in(browser, users)
    page = await browser.get(started["verification_uri_complete"])
    assert page.status_code == 200 and form_fields(page.text)["user_code"] == started["user_code"]
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "authorization_pending")


async def test_the_device_page_asks_a_stranger_to_sign_in_first(browser: Browser) -> None:
    page = await browser.get("/device?user_code=BCDF-GHJK")
    assert page.status_code == 200 and "login-form" in page.text
    assert form_fields(page.text)["continue"] == "/device?user_code=BCDF-GHJK"


async def test_wrong_user_codes_are_locked_out_after_five(
    client: httpx.AsyncClient, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    await signed_in(browser, users)
    csrf = form_fields((await browser.get("/device")).text)["csrf"]
    for _ in range(5):
        wrong = await browser.post_form("/device", {"csrf": csrf, "user_code": "BBBB-BBBB"})
        assert wrong.status_code == 400 and "not valid" in wrong.text
    locked = await browser.post_form("/device", {"csrf": csrf, "user_code": started["user_code"]})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert "Living-room hub" not in locked.text


async def test_a_forged_device_approval_is_refused(
    client: httpx.AsyncClient, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    started = await start(client, hub["client_id"])
    await signed_in(browser, users)
    for csrf, origin in (("", ISSUER), ("0" * 64, ISSUER), (None, "https://evil.example")):
        if csrf is None:
            csrf = form_fields((await browser.get("/device")).text)["csrf"]
        data = {"csrf": csrf, "user_code": started["user_code"], "decision": "approve"}
        refused = await browser.post_form("/device", data, origin=origin)
        assert refused.status_code == 403, refused.text
    assert_error(await poll(client, hub["client_id"], started["device_code"]), 400, "authorization_pending")


async def test_a_garbled_decision_or_code_is_a_4xx(
    client: httpx.AsyncClient, users: Users, browser: Browser, hub: dict[str, Any]
) -> None:
    await signed_in(browser, users)
    csrf = form_fields((await browser.get("/device")).text)["csrf"]
    for data in (
        {"csrf": csrf, "user_code": "BCDF-GHJK", "decision": "maybe"},
        {"csrf": csrf, "user_code": "x" * 10_000},
        {"csrf": csrf, "user_code": "<script>alert(1)</script>"},
        {"csrf": csrf},
    ):
        response = await browser.post_form("/device", data)
        assert 400 <= response.status_code < 500, (data, response.status_code)
        assert "<script>alert(1)</script>" not in response.text


async def test_a_user_code_that_clashes_with_a_stored_one_is_drawn_again(ctx: Context, hub: dict[str, Any]) -> None:
    first = await save_device_code(ctx, client_id=hub["client_id"], device_code="one", user_code="BCDF-GHJK")
    second = await save_device_code(ctx, client_id=hub["client_id"], device_code="two", user_code="BCDF-GHJK")
    assert first == "BCDF-GHJK"
    assert second != first and USER_CODE.fullmatch(second)
