"""Device tokens (SPEC §3, §5): a device trades its UID and secret for a device token; a device token is
never a user token and a user token never a device token, at any door (SECURITY: "the same token must
get the same answer at every door"); a disabled device's tokens fail at once, and enabling restores it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.app import error_response
from shared.context import Context
from shared.deps import CurrentDevice
from shared.errors import HandshakeError, InvalidTokenError
from shared.settings import Settings
from shared.tokens import TokenKind
from tests.conftest import Users, bearer
from tests.device_manager import (
    IP,
    Device,
    Person,
    assert_error,
    bound_device,
    device_token,
    events,
    introspect,
    person,
    provision,
    staff,
)

INACTIVE = {"active": False}


async def token_for(client: httpx.AsyncClient, device: Device) -> str:
    response = await device_token(client, device.uid, device.secret)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@asynccontextmanager
async def device_door(ctx: Context) -> AsyncIterator[httpx.AsyncClient]:
    """A route behind `CurrentDevice`, as the device connector and third-party services use it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"ctx": ctx}

    door = FastAPI(lifespan=lifespan)

    @door.exception_handler(HandshakeError)
    async def handshake_error(request: Request, exc: HandshakeError) -> JSONResponse:
        return error_response(exc)

    @door.get("/whoami")
    async def whoami(device: CurrentDevice) -> dict[str, str]:
        return {"uid": device.id}

    async with LifespanManager(door) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://door") as http:
            yield http


async def set_disabled(client: httpx.AsyncClient, caller: Person, uid: str, disabled: bool) -> httpx.Response:
    action = "disable" if disabled else "enable"
    return await client.post(f"/v1/admin/devices/{uid}/{action}", headers=caller.headers)


# --- issuing ------------------------------------------------------------------------------------


async def test_a_device_gets_a_device_token_for_its_secret(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    response = await device_token(client, device.uid, device.secret)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert (body["token_type"], body["expires_in"]) == ("Bearer", settings.device_token_ttl)
    header = jwt.get_unverified_header(body["access_token"])
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert header["typ"] == "device+jwt"
    assert header["kid"]
    assert claims["sub"] == device.uid
    assert (claims["iss"], claims["aud"]) == (settings.issuer, settings.audience)
    assert claims["exp"] - claims["iat"] == settings.device_token_ttl
    assert claims["jti"]
    assert "sid" not in claims and "role" not in claims


async def test_the_uid_may_be_given_in_lower_case(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    response = await device_token(client, device.uid.lower(), device.secret)
    assert response.status_code == 200, response.text
    assert jwt.decode(response.json()["access_token"], options={"verify_signature": False})["sub"] == device.uid


async def test_wrong_secret_and_unknown_uid_are_401_alike(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    first, second = await provision(client, admin, count=2)
    wrong = await device_token(client, first.uid, second.secret)
    unknown = await device_token(client, "UNKNOWNUNKNOWN000001", first.secret)
    assert_error(wrong, 401, "invalid_credentials")
    assert_error(unknown, 401, "invalid_credentials")
    assert wrong.json() == unknown.json()


async def test_the_uid_alone_proves_nothing(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    # Kalay's CVE-2021-28372: knowing a device's UID must not be enough to act as the device.
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    for secret in ("", device.uid, device.claim_code):
        assert_error(await device_token(client, device.uid, secret), 401, "invalid_credentials")


async def test_issuing_writes_device_token_issued(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    await token_for(client, device)
    (event,) = await events(client, admin, device_uid=device.uid, type="device_token_issued")
    assert (event["actor_type"], event["actor_id"], event["device_uid"], event["ip"]) == (
        "device",
        device.uid,
        device.uid,
        IP,
    )


async def test_introspection_says_token_use_device(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    body = await introspect(client, await token_for(client, device))
    assert body["active"] is True
    assert (body["token_use"], body["sub"], body["token_type"]) == ("device", device.uid, "Bearer")
    assert body["aud"] == settings.audience
    assert "role" not in body


# --- a device token is never a user token -------------------------------------------------------

USER_DOORS = [
    ("GET", "/v1/users/me", None),
    ("GET", "/v1/devices", None),
    ("GET", "/v1/devices/{uid}", None),
    ("POST", "/v1/devices/bind", {"uid": "{uid}", "claim_code": "{code}"}),
    ("POST", "/v1/devices/pairing-tokens", None),
    ("GET", "/v1/auth/sessions", None),
    ("POST", "/v1/auth/logout", None),
    ("POST", "/v1/auth/exchange", {"audience": "partner.example"}),
    ("GET", "/v1/admin/devices", None),
]


@pytest.mark.parametrize("scheme", ["Bearer", "JWT"])
@pytest.mark.parametrize(("method", "path", "body"), USER_DOORS, ids=[f"{m} {p}" for m, p, _ in USER_DOORS])
async def test_a_device_token_is_refused_where_a_user_token_is_expected(
    client: httpx.AsyncClient,
    users: Users,
    ctx: Context,
    scheme: str,
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    token = await token_for(client, device)
    if body is not None:
        body = {key: value.format(uid=device.uid, code=device.claim_code) for key, value in body.items()}
    response = await client.request(
        method, path.format(uid=device.uid), json=body, headers={"Authorization": f"{scheme} {token}"}
    )
    assert_error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_a_device_token_is_not_a_refresh_token(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    token = await token_for(client, device)
    assert_error(await client.post("/v1/auth/refresh", json={"refresh_token": token}), 401, "invalid_grant")
    form = {"grant_type": "refresh_token", "refresh_token": token}
    # RFC 6749 §5.2: the token endpoint answers invalid_grant with 400.
    assert_error(await client.post("/v1/auth/token", data=form), 400, "invalid_grant")


async def test_a_devices_uid_and_secret_do_not_log_in(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    credentials = {"username": device.uid, "password": device.secret}
    assert_error(await client.post("/v1/auth/login", json=credentials), 401, "invalid_credentials")
    form = {"grant_type": "password", **credentials}
    assert_error(await client.post("/v1/auth/token", data=form), 400, "invalid_grant")


async def test_a_device_token_is_not_accepted_by_the_authenticator_as_a_user_token(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    token = await token_for(client, device)
    for kind in (TokenKind.ACCESS, TokenKind.EXCHANGED):
        with pytest.raises(InvalidTokenError):
            await ctx.auth.authenticate(token, kind)


# --- a user token is never a device token -------------------------------------------------------


async def test_a_user_token_is_refused_where_a_device_token_is_expected(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    user = await person(users)
    async with device_door(ctx) as door:
        accepted = await door.get("/whoami", headers=bearer(await token_for(client, device)))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json() == {"uid": device.uid}
        for token in (user.tokens["access_token"], admin.tokens["access_token"], user.tokens["refresh_token"]):
            refused = await door.get("/whoami", headers=bearer(token))
            assert_error(refused, 401, "invalid_token")
    with pytest.raises(InvalidTokenError):
        await ctx.auth.authenticate(user.tokens["access_token"], TokenKind.DEVICE)
    assert (await introspect(client, user.tokens["access_token"]))["token_use"] == "access"


async def test_a_user_token_does_not_buy_a_device_token(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    user = await person(users)
    assert_error(await device_token(client, device.uid, user.tokens["refresh_token"]), 401, "invalid_credentials")
    # An access token is longer than any secret: refused before it is even compared.
    assert (await device_token(client, device.uid, user.tokens["access_token"])).status_code in (401, 422)
    response = await client.post("/v1/devices/token", json={"uid": device.uid, "secret": ""}, headers=user.headers)
    assert_error(response, 401, "invalid_credentials")


# --- revocation and disabling -------------------------------------------------------------------


async def test_a_revoked_device_token_fails_and_a_new_one_works(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    token = await token_for(client, device)
    assert (await client.post("/v1/auth/revoke", data={"token": token})).status_code == 200
    assert await introspect(client, token) == INACTIVE
    fresh = await token_for(client, device)
    assert (await introspect(client, fresh))["active"] is True


async def test_disabling_a_device_fails_its_tokens_at_once(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await bound_device(client, admin, owner)
    token = await token_for(client, device)
    response = await set_disabled(client, admin, device.uid, True)
    assert response.status_code == 200, response.text
    assert await introspect(client, token) == INACTIVE
    async with device_door(ctx) as door:
        assert_error(await door.get("/whoami", headers=bearer(token)), 401, "invalid_token")
    assert_error(await device_token(client, device.uid, device.secret), 403, "device_disabled")
    # Whoever lacks the secret learns nothing of the device's state.
    assert_error(await device_token(client, device.uid, "hsd_" + "x" * 32), 401, "invalid_credentials")
    (event,) = await events(client, admin, device_uid=device.uid, type="device_disabled")
    assert (event["actor_type"], event["actor_id"], event["ip"]) == ("user", admin.id, IP)


async def test_enabling_a_device_restores_it(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    assert (await set_disabled(client, admin, device.uid, True)).status_code == 200
    assert_error(await device_token(client, device.uid, device.secret), 403, "device_disabled")
    assert (await set_disabled(client, admin, device.uid, False)).status_code == 200
    token = await token_for(client, device)
    body = await introspect(client, token)
    assert (body["active"], body["token_use"], body["sub"]) == (True, "device", device.uid)
    async with device_door(ctx) as door:
        assert (await door.get("/whoami", headers=bearer(token))).status_code == 200


async def test_disabled_shows_in_the_admin_device_list(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    first, second = await provision(client, admin, count=2)
    assert (await set_disabled(client, admin, first.uid, True)).status_code == 200
    response = await client.get("/v1/admin/devices", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-total-count"] == "2"
    assert {row["uid"]: row["disabled"] for row in response.json()} == {first.uid: True, second.uid: False}


async def test_disabling_an_unknown_device_is_404(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    assert_error(await set_disabled(client, admin, "NOSUCHDEVICE00000001", True), 404, "not_found")
