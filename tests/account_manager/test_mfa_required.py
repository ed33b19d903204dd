"""HANDSHAKE_MFA_REQUIRED_ROLES at its default (admin and support, SPEC §12): until they enrol a second
factor, their tokens serve the enrolment routes, GET /v1/users/me, logout and refresh only, and every
other door answers mfa_enrolment_required (or refuses the token as the broker and introspection do)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from account_manager.accounts import create_user
from shared.context import Context
from shared.models import Role
from shared.tokens import TokenKind
from tests.account_manager.mfa_helpers import code, enrol, password_step, second_step
from tests.conftest import Users, assert_error, bearer

PASSWORD = "correct horse battery"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"mfa_required_roles": ["admin", "support"]}  # the default, which the rest of the suite turns off


async def staff(ctx: Context, users: Users, role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    user = await create_user(ctx, username=f"{role}{secrets.token_hex(4)}", password=PASSWORD, role=Role(role))
    return {"id": user.id, "username": user.username}, await users.login(user.username)


def test_the_default_requires_a_factor_of_admin_and_support() -> None:
    from shared.settings import Settings

    assert Settings().mfa_required_roles == ["admin", "support"]
    assert Settings.model_validate({"mfa_required_roles": ""}).mfa_required_roles == []  # as the environment gives it
    with pytest.raises(ValueError, match="unknown role"):
        Settings(mfa_required_roles=["root"])


@pytest.mark.parametrize("role", ["admin", "support"])
async def test_staff_without_a_factor_get_tokens_for_enrolment_only(
    client: httpx.AsyncClient, users: Users, ctx: Context, role: str
) -> None:
    _, tokens = await staff(ctx, users, role)
    headers = bearer(tokens)
    me = await client.get("/v1/users/me", headers=headers)
    assert me.status_code == 200 and me.json()["mfa_enabled"] is False
    for method, path in [
        ("GET", "/v1/admin/stats"),
        ("GET", "/v1/admin/users"),
        ("GET", "/v1/devices"),
        ("GET", "/v1/auth/sessions"),
        ("PATCH", "/v1/users/me"),
        ("POST", "/v1/auth/exchange"),
        ("POST", "/v1/auth/logout-all"),
        ("GET", "/v1/admin/devices"),
    ]:
        response = await client.request(method, path, headers=headers, json={})
        assert_error(response, 403, "mfa_enrolment_required")
        assert "www-authenticate" not in response.headers
    # Other doors that take an access token refuse it too: introspection and the broker's gate.
    introspected = await client.post("/v1/auth/introspect", data={"token": tokens["access_token"]})
    assert introspected.json() == {"active": False}
    with pytest.raises(Exception) as refused:
        await ctx.auth.authenticate(tokens["access_token"], TokenKind.ACCESS)
    assert getattr(refused.value, "code", None) == "mfa_enrolment_required"


async def test_enrolling_and_refreshing_gives_full_tokens(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    _, tokens = await staff(ctx, users, "admin")
    await enrol(client, tokens)
    # The token in hand stays what it was; the refresh of this same session is a full one.
    assert_error(await client.get("/v1/admin/stats", headers=bearer(tokens)), 403, "mfa_enrolment_required")
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    assert (await client.get("/v1/admin/stats", headers=bearer(refreshed.json()))).status_code == 200


async def test_staff_with_a_factor_log_in_with_a_code_to_full_tokens(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, tokens = await staff(ctx, users, "admin")
    factor = await enrol(client, tokens)
    done = await second_step(client, await password_step(client, admin["username"]), code=code(factor.secret))
    assert done.status_code == 200, done.text
    assert (await client.get("/v1/admin/stats", headers=bearer(done.json()))).status_code == 200


async def test_an_enrolment_only_session_logs_out(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    _, tokens = await staff(ctx, users, "support")
    out = await client.post("/v1/auth/logout", headers=bearer(tokens))
    assert out.status_code == 204, out.text
    assert_error(await client.get("/v1/users/me", headers=bearer(tokens)), 401, "invalid_token")


async def test_plain_users_need_no_factor(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert (await client.get("/v1/devices", headers=bearer(tokens))).status_code == 200


async def test_a_promoted_user_gets_enrolment_only_tokens_at_the_next_login(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, _ = await users.new()
    _, admin_tokens = await staff(ctx, users, "admin")
    await enrol(client, admin_tokens)
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": admin_tokens["refresh_token"]})
    admin_headers = bearer(refreshed.json())
    promoted = await client.patch(f"/v1/admin/users/{user['id']}", json={"role": "support"}, headers=admin_headers)
    assert promoted.status_code == 200, promoted.text
    tokens = await users.login(user["username"])
    assert_error(await client.get("/v1/admin/stats", headers=bearer(tokens)), 403, "mfa_enrolment_required")


async def test_the_broker_refuses_an_enrolment_only_token(users: Users, ctx: Context) -> None:
    from device_connector.gate import Gate
    from device_connector.port import ConnackCode, RefusedError

    admin, tokens = await staff(ctx, users, "admin")
    with pytest.raises(RefusedError) as refused:
        await Gate(ctx).admit(client_id=admin["id"], username=admin["id"], password=tokens["access_token"])
    assert refused.value.code == ConnackCode.NOT_AUTHORIZED


async def test_the_code_flow_gives_staff_without_a_factor_enrolment_only_tokens(
    app: FastAPI, client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    from account_manager.clients import ClientType, GrantType, create_client
    from tests.account_manager.flows import AUTHORIZE_URL, REGISTERED, TOKEN_URL, Browser, new_verifier, oauth_client

    made = await create_client(
        ctx,
        name="Admin app",
        redirect_uris=[REGISTERED],
        grant_types=[str(GrantType.AUTHORIZATION_CODE)],
        client_type=ClientType.PUBLIC,
        actor_id=None,
        ip=None,
    )
    admin, _ = await staff(ctx, users, "admin")
    app_oauth = oauth_client(app, made.client.id)
    verifier = new_verifier()
    url, _ = app_oauth.create_authorization_url(AUTHORIZE_URL, code_verifier=verifier)
    browser = Browser(app)
    try:
        location = await browser.authorize(url, admin["username"])
    finally:
        await browser.close()
    token = await app_oauth.fetch_token(TOKEN_URL, authorization_response=location, code_verifier=verifier)
    headers = bearer(token["access_token"])
    assert (await client.get("/v1/users/me", headers=headers)).status_code == 200
    assert_error(await client.get("/v1/admin/stats", headers=headers), 403, "mfa_enrolment_required")
