"""The OAuth side of the account manager (SPEC §3, §4): introspection (RFC 7662), revocation (RFC 7009),
exchange for a partner audience, the JWKS and the discovery document."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.settings import Settings
from shared.testing import forge
from tests.conftest import Users, assert_error, bearer

INACTIVE = {"active": False}


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def introspect(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await client.post("/v1/auth/introspect", data={"token": token})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/v1/users/me", headers=bearer(token))


async def exchange(client: httpx.AsyncClient, tokens: dict[str, Any], **body: Any) -> httpx.Response:
    return await client.post("/v1/auth/exchange", json=body, headers=bearer(tokens))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- introspection ------------------------------------------------------------------------------


async def test_introspect_form_active_access_token(client: httpx.AsyncClient, users: Users, settings: Settings) -> None:
    user, tokens = await users.new()
    body = await introspect(client, tokens["access_token"])
    claims = claims_of(tokens["access_token"])
    assert body["active"] is True
    assert body["sub"] == user["id"]
    assert body["exp"] == claims["exp"] and body["iat"] == claims["iat"]
    assert isinstance(body["exp"], int) and isinstance(body["iat"], int)
    assert body["aud"] == settings.audience
    assert body["token_type"] == "Bearer"
    assert body["token_use"] == "access"
    assert body["role"] == "user"


async def test_introspect_accepts_a_json_body(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    response = await client.post("/v1/auth/introspect", json={"token": tokens["access_token"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["active"] is True
    assert body["sub"] == user["id"]
    assert body["token_use"] == "access"


async def test_introspect_refresh_token_is_token_use_refresh(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    body = await introspect(client, tokens["refresh_token"])
    assert body["active"] is True
    assert body["sub"] == user["id"]
    assert body["token_use"] == "refresh"
    assert body["token_type"] == "Bearer"


async def test_introspect_exchanged_token_is_token_use_exchanged(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    exchanged = (await exchange(client, tokens, audience="partner.example")).json()["access_token"]
    body = await introspect(client, exchanged)
    assert body["active"] is True
    assert body["sub"] == user["id"]
    assert body["token_use"] == "exchanged"
    assert body["aud"] == "partner.example"


async def test_introspect_expired_token_is_exactly_inactive(
    client: httpx.AsyncClient, users: Users, settings: Settings
) -> None:
    user, tokens = await users.new()
    sid = claims_of(tokens["access_token"])["sid"]
    expired = forge(
        settings.keys_dir,
        claims={"sub": user["id"], "sid": sid, "role": "user", "iat": int(time.time()) - 600},
        issuer=settings.issuer,
        audience=settings.audience,
        ttl=-300,  # expired five minutes ago: far past the 30 s leeway
    )
    assert await introspect(client, expired) == INACTIVE


async def test_introspect_token_of_a_logged_out_session_is_exactly_inactive(
    client: httpx.AsyncClient, users: Users
) -> None:
    _, tokens = await users.new()
    assert (await client.post("/v1/auth/logout", headers=bearer(tokens))).status_code == 204
    assert await introspect(client, tokens["access_token"]) == INACTIVE
    assert await introspect(client, tokens["refresh_token"]) == INACTIVE


async def test_introspect_used_refresh_token_is_exactly_inactive(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    response = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200, response.text
    assert await introspect(client, tokens["refresh_token"]) == INACTIVE
    assert (await introspect(client, response.json()["refresh_token"]))["active"] is True


async def test_introspect_token_signed_by_a_foreign_key_is_exactly_inactive(
    client: httpx.AsyncClient, users: Users
) -> None:
    _, tokens = await users.new()
    header = jwt.get_unverified_header(tokens["access_token"])
    foreign = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims_of(tokens["access_token"]), foreign, algorithm="ES256", headers=header)
    assert await introspect(client, forged) == INACTIVE
    assert (await me(client, forged)).status_code == 401


async def test_introspect_token_with_altered_claims_is_exactly_inactive(
    client: httpx.AsyncClient, users: Users
) -> None:
    _, tokens = await users.new()
    header, _, signature = tokens["access_token"].split(".")
    payload = {**claims_of(tokens["access_token"]), "role": "admin"}
    tampered = ".".join([header, _b64(json.dumps(payload).encode()), signature])
    assert await introspect(client, tampered) == INACTIVE


async def test_introspect_unsigned_token_is_exactly_inactive(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    header = {**jwt.get_unverified_header(tokens["access_token"]), "alg": "none"}
    unsigned = ".".join([_b64(json.dumps(header).encode()), tokens["access_token"].split(".")[1], ""])
    assert await introspect(client, unsigned) == INACTIVE


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "hsr_garbage", "eyJhbGciOiJFUzI1NiJ9.e30.", "x" * 9000])
async def test_introspect_garbage_is_exactly_inactive(client: httpx.AsyncClient, garbage: str) -> None:
    assert await introspect(client, garbage) == INACTIVE


@pytest.mark.parametrize("settings_overrides", [pytest.param({"introspect_rate": 5}, id="rate5")])
async def test_introspect_over_the_rate_per_ip_is_429(client: httpx.AsyncClient) -> None:
    responses = [await client.post("/v1/auth/introspect", data={"token": "garbage"}) for _ in range(11)]
    # The first five are always within the rate; eleven cannot all fit into two one-second windows.
    assert [r.status_code for r in responses[:5]] == [200] * 5
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    assert set(limited[0].json()) == {"error", "detail"}
    assert int(limited[0].headers["retry-after"]) >= 1


# --- revocation (RFC 7009) ----------------------------------------------------------------------


@pytest.mark.parametrize("token", ["garbage", "hsr_unknown", "a.b.c", ""])
async def test_revoke_answers_200_for_anything(client: httpx.AsyncClient, token: str) -> None:
    response = await client.post("/v1/auth/revoke", data={"token": token})
    assert response.status_code == 200, response.text


async def test_revoking_an_access_token_ends_its_session(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    response = await client.post("/v1/auth/revoke", data={"token": tokens["access_token"]})
    assert response.status_code == 200, response.text
    assert_error(await me(client, tokens["access_token"]), 401, "invalid_token")
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_error(refreshed, 401, "invalid_grant")
    assert (await me(client, other["access_token"])).status_code == 200


async def test_revoking_a_refresh_token_ends_its_session(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    response = await client.post("/v1/auth/revoke", json={"token": tokens["refresh_token"]})
    assert response.status_code == 200, response.text
    assert_error(await me(client, tokens["access_token"]), 401, "invalid_token")
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_error(refreshed, 401, "invalid_grant")
    assert (await me(client, other["access_token"])).status_code == 200


async def test_revoking_twice_answers_200_both_times(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    for _ in range(2):
        response = await client.post("/v1/auth/revoke", data={"token": tokens["access_token"]})
        assert response.status_code == 200, response.text


# --- exchange -----------------------------------------------------------------------------------


async def test_exchange_issues_a_short_lived_token_for_the_partner(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    response = await exchange(client, tokens, audience="partner.example", nonce="n1")
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    claims = claims_of(token)
    assert claims["aud"] == "partner.example"
    assert claims["nonce"] == "n1"
    assert claims["sub"] == user["id"]
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


async def test_exchange_without_nonce_carries_no_nonce(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    response = await exchange(client, tokens, audience="partner.example")
    assert response.status_code == 200, response.text
    assert "nonce" not in claims_of(response.json()["access_token"])


async def test_exchange_for_an_unknown_audience_is_400_invalid_target(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert_error(await exchange(client, tokens, audience="evil.example"), 400, "invalid_target")


async def test_exchange_for_our_own_audience_is_400_invalid_target(
    client: httpx.AsyncClient, users: Users, settings: Settings
) -> None:
    _, tokens = await users.new()
    assert_error(await exchange(client, tokens, audience=settings.audience), 400, "invalid_target")


async def test_exchanged_token_is_refused_as_a_user_token(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    exchanged = (await exchange(client, tokens, audience="partner.example", nonce="n1")).json()["access_token"]
    response = await me(client, exchanged)
    assert_error(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_exchange_without_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/exchange", json={"audience": "partner.example"})
    assert_error(response, 401, "invalid_token")


# --- JWKS and discovery -------------------------------------------------------------------------


async def test_jwks_serves_public_signing_keys_for_five_minutes(client: httpx.AsyncClient) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    assert "max-age=300" in response.headers["cache-control"]
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert {"kty", "kid", "alg", "use"} <= set(key)
        assert key["use"] == "sig"
        assert "d" not in key  # never the private half


async def test_access_token_verifies_with_a_jwks_key(
    client: httpx.AsyncClient, users: Users, settings: Settings
) -> None:
    _, tokens = await users.new()
    keys = {key["kid"]: key for key in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    header = jwt.get_unverified_header(tokens["access_token"])
    jwk = jwt.PyJWK(keys[header["kid"]])
    claims = jwt.decode(
        tokens["access_token"], jwk, algorithms=[jwk.algorithm_name], audience=settings.audience, issuer=settings.issuer
    )
    assert claims["sid"] and claims["jti"]


async def test_openid_configuration_names_the_endpoints(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/.well-known/openid-configuration")
    assert response.status_code == 200, response.text
    document = response.json()
    issuer = settings.issuer.rstrip("/")
    assert document["issuer"] == settings.issuer
    assert document["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert document["token_endpoint"] == f"{issuer}/v1/auth/token"
    assert document["introspection_endpoint"] == f"{issuer}/v1/auth/introspect"
    assert document["revocation_endpoint"] == f"{issuer}/v1/auth/revoke"


async def test_openid_configuration_endpoints_answer(client: httpx.AsyncClient) -> None:
    document = (await client.get("/.well-known/openid-configuration")).json()
    base = "http://testserver"
    jwks, introspection, revocation = await asyncio.gather(
        client.get(document["jwks_uri"].removeprefix(base)),
        client.post(document["introspection_endpoint"].removeprefix(base), data={"token": "x"}),
        client.post(document["revocation_endpoint"].removeprefix(base), data={"token": "x"}),
    )
    assert jwks.status_code == introspection.status_code == revocation.status_code == 200
