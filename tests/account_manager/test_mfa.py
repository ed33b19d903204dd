"""The second factor (SPEC §12): TOTP enrolment and confirmation, the login's second step with a code
or a recovery code, each code once, the mfa_token's bounds, the lockout, turning it off; what is
stored. On both backends, through the API."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from account_manager.totp import KEY_FILE, matching_step, secret_box
from shared import tables
from shared.context import Context
from tests.account_manager.mfa_helpers import (
    away_from_step_edge,
    code,
    enrol,
    password_step,
    second_step,
    wrong_code,
)
from tests.conftest import Users, assert_error, bearer

OTHER_IP = "198.51.100.9"
PASSWORD = "correct horse battery"


@pytest.fixture
async def other_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The same server, seen from another address."""
    transport = httpx.ASGITransport(app=app.state.lifespan_app, client=(OTHER_IP, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def events_of(ctx: Context, type_: str, user_id: str) -> list[dict[str, Any]]:
    async with ctx.db.read() as tx:
        rows = await tx.execute(
            sa.select(tables.events).where(tables.events.c.type == type_, tables.events.c.actor_id == user_id)
        )
        return [dict(row._mapping) for row in rows]


# --- the code math (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(0, True), (-30, True), (-60, False), (30, False), (-90, False)],
    ids=["current step", "previous step", "two steps back", "next step", "three steps back"],
)
def test_a_code_of_the_current_or_previous_step_matches_and_no_other(offset: int, accepted: bool) -> None:
    secret = pyotp.random_base32()
    now = 1_700_000_015.0  # the middle of a step
    typed = pyotp.TOTP(secret).at(now + offset)
    step = matching_step(secret, typed, now)
    assert (step is not None) is accepted
    if accepted:
        assert step == int((now + offset) // 30)


# --- enrolment --------------------------------------------------------------------------------


async def test_enrolment_gives_a_secret_and_an_otpauth_uri_and_nothing_changes_until_confirmed(
    client: httpx.AsyncClient, users: Users
) -> None:
    user, tokens = await users.new()
    started = await client.post("/v1/users/me/mfa/totp", headers=bearer(tokens))
    assert started.status_code == 201, started.text
    body = started.json()
    assert set(body) == {"secret", "otpauth_uri"}
    assert started.headers["cache-control"] == "no-store"
    uri = pyotp.parse_uri(body["otpauth_uri"])
    assert isinstance(uri, pyotp.TOTP) and uri.secret == body["secret"]
    assert uri.digits == 6 and uri.interval == 30 and uri.name == user["username"] and uri.issuer == "Handshake"
    # Not confirmed: the password alone still logs in, and /me says no factor.
    await users.login(user["username"])
    me = await client.get("/v1/users/me", headers=bearer(tokens))
    assert me.json()["mfa_enabled"] is False


async def test_confirmation_with_a_previous_step_code_gives_ten_recovery_codes_once(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)  # confirms with the previous step's code
    assert len(factor.recovery_codes) == 10 and len(set(factor.recovery_codes)) == 10
    me = await client.get("/v1/users/me", headers=bearer(tokens))
    assert me.json()["mfa_enabled"] is True
    again = await client.post(
        "/v1/users/me/mfa/totp/confirm", json={"code": code(factor.secret)}, headers=bearer(tokens)
    )
    assert_error(again, 409, "mfa_already_enabled")
    assert_error(await client.post("/v1/users/me/mfa/totp", headers=bearer(tokens)), 409, "mfa_already_enabled")
    assert len(await events_of(ctx, "mfa_enabled", user["id"])) == 1


async def test_confirmation_refuses_a_wrong_code_and_a_code_two_steps_back(
    client: httpx.AsyncClient, users: Users
) -> None:
    _, tokens = await users.new()
    secret = (await client.post("/v1/users/me/mfa/totp", headers=bearer(tokens))).json()["secret"]
    await away_from_step_edge()
    for typed in (wrong_code(secret), code(secret, 2)):
        response = await client.post("/v1/users/me/mfa/totp/confirm", json={"code": typed}, headers=bearer(tokens))
        assert_error(response, 400, "invalid_code")
    me = await client.get("/v1/users/me", headers=bearer(tokens))
    assert me.json()["mfa_enabled"] is False


async def test_confirmation_without_enrolment_is_invalid_code(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    response = await client.post("/v1/users/me/mfa/totp/confirm", json={"code": "123456"}, headers=bearer(tokens))
    assert_error(response, 400, "invalid_code")


async def test_the_secret_is_stored_sealed_and_bound_to_its_user(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    other, _ = await users.new()
    factor = await enrol(client, tokens)
    async with ctx.db.read() as tx:
        row = (await tx.execute(sa.select(tables.user_totp).where(tables.user_totp.c.user_id == user["id"]))).one()
    box = bytes(row.secret_box)
    raw = pyotp.TOTP(factor.secret).byte_secret()
    assert factor.secret.encode() not in box and factor.secret.lower().encode() not in box and raw not in box
    assert secret_box(ctx).open(box, user_id=user["id"]) == factor.secret
    assert secret_box(ctx).open(box, user_id=other["id"]) is None  # the user id is associated data
    key_file = ctx.settings.keys_dir / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


# --- the login's second step --------------------------------------------------------------------


async def test_a_user_with_a_factor_gets_mfa_required_then_tokens_for_a_code(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    response = await client.post("/v1/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "mfa_token"} and body["error"] == "mfa_required"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    done = await second_step(client, body["mfa_token"], code=code(factor.secret))
    assert done.status_code == 200, done.text
    assert set(done.json()) == {"access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in"}
    me = await client.get("/v1/users/me", headers=bearer(done.json()))
    assert me.status_code == 200 and me.json()["id"] == user["id"]
    # A refresh needs no code.
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": done.json()["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    logins = await events_of(ctx, "login_succeeded", user["id"])
    assert logins[-1]["detail"] == {"mfa": True}


async def test_a_code_works_once(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    typed = code(factor.secret)
    first = await second_step(client, await password_step(client, user["username"]), code=typed)
    assert first.status_code == 200, first.text
    replay = await second_step(client, await password_step(client, user["username"]), code=typed)
    assert_error_with(replay, 401, "invalid_code")


async def test_the_code_used_to_confirm_cannot_log_in(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)  # used the previous step
    replay = await second_step(client, await password_step(client, user["username"]), code=code(factor.secret, 1))
    assert_error_with(replay, 401, "invalid_code")


async def test_two_submissions_of_one_code_at_once_give_one_session(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    mfa_tokens = [await password_step(client, user["username"]) for _ in range(2)]
    typed = code(factor.secret)
    answers = await asyncio.gather(*(second_step(client, token, code=typed) for token in mfa_tokens))
    assert sorted(answer.status_code for answer in answers) == [200, 401], [a.text for a in answers]
    async with ctx.db.read() as tx:
        sessions = (
            await tx.execute(sa.select(sa.func.count()).where(tables.sessions.c.user_id == user["id"]))
        ).scalar_one()
    assert sessions == 2  # the one that enrolled, and exactly one of the two logins


async def test_a_recovery_code_works_once(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    recovery = factor.recovery_codes[0]
    first = await second_step(client, await password_step(client, user["username"]), recovery_code=recovery)
    assert first.status_code == 200, first.text
    # Typed without dashes, in capitals: still the same code, and used.
    typed = recovery.replace("-", "").upper()
    again = await second_step(client, await password_step(client, user["username"]), recovery_code=typed)
    assert_error_with(again, 401, "invalid_code")
    used = await events_of(ctx, "recovery_code_used", user["id"])
    assert len(used) == 1 and used[0]["detail"] == {"recovery_codes_left": 9}


async def test_two_submissions_of_one_recovery_code_at_once_give_one_session(
    client: httpx.AsyncClient, users: Users
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    mfa_tokens = [await password_step(client, user["username"]) for _ in range(2)]
    recovery = factor.recovery_codes[3]
    answers = await asyncio.gather(*(second_step(client, t, recovery_code=recovery) for t in mfa_tokens))
    assert sorted(answer.status_code for answer in answers) == [200, 401], [a.text for a in answers]


async def test_an_mfa_token_works_once(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    mfa_token = await password_step(client, user["username"])
    assert (await second_step(client, mfa_token, recovery_code=factor.recovery_codes[0])).status_code == 200
    reused = await second_step(client, mfa_token, recovery_code=factor.recovery_codes[1])
    assert_error(reused, 401, "invalid_mfa_token")


async def test_a_wrong_code_leaves_the_mfa_token_for_another_try(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    mfa_token = await password_step(client, user["username"])
    assert_error_with(await second_step(client, mfa_token, code=wrong_code(factor.secret)), 401, "invalid_code")
    assert (await second_step(client, mfa_token, code=code(factor.secret))).status_code == 200


async def test_an_expired_mfa_token_is_refused(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    mfa_token = await password_step(client, user["username"])
    async with ctx.db.write() as tx:
        await tx.execute(
            sa.update(tables.mfa_tokens)
            .where(tables.mfa_tokens.c.user_id == user["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert_error(await second_step(client, mfa_token, code=code(factor.secret)), 401, "invalid_mfa_token")


async def test_the_mfa_token_lives_five_minutes_and_is_stored_hashed(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    await enrol(client, tokens)
    mfa_token = await password_step(client, user["username"])
    async with ctx.db.read() as tx:
        row = (await tx.execute(sa.select(tables.mfa_tokens).where(tables.mfa_tokens.c.user_id == user["id"]))).one()
    assert row.token_hash != mfa_token and mfa_token not in row.token_hash
    assert 295 <= (row.expires_at - row.created_at).total_seconds() <= 300


async def test_an_mfa_token_from_another_address_is_refused(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient, users: Users
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    mfa_token = await password_step(client, user["username"])
    stolen = await second_step(other_client, mfa_token, code=code(factor.secret))
    assert_error(stolen, 401, "invalid_mfa_token")
    # The code was not used by the refused attempt.
    assert (await second_step(client, mfa_token, code=code(factor.secret))).status_code == 200


async def test_an_mfa_token_of_another_user_does_not_take_my_code(client: httpx.AsyncClient, users: Users) -> None:
    alice, alice_tokens = await users.new()
    bob, bob_tokens = await users.new()
    alice_factor = await enrol(client, alice_tokens)
    await enrol(client, bob_tokens)
    bobs_token = await password_step(client, bob["username"])
    mixed = await second_step(client, bobs_token, code=code(alice_factor.secret))
    assert_error_with(mixed, 401, "invalid_code")
    mine = await second_step(client, await password_step(client, alice["username"]), code=code(alice_factor.secret))
    assert mine.status_code == 200
    me = await client.get("/v1/users/me", headers=bearer(mine.json()))
    assert me.json()["id"] == alice["id"]


async def test_an_unknown_or_garbage_mfa_token_is_refused(client: httpx.AsyncClient) -> None:
    for token in ("hsm_nothing", "", "x" * 200):
        assert_error(await second_step(client, token, code="123456"), 401, "invalid_mfa_token")


@pytest.mark.parametrize(
    "body",
    [
        {"code": "123456"},
        {"mfa_token": "hsm_x"},
        {"mfa_token": "hsm_x", "code": "12345"},
        {"mfa_token": "hsm_x", "code": "abcdef"},
        {"mfa_token": "hsm_x", "code": 123456},
        {"mfa_token": "hsm_x", "code": "1" * 33},
        {"mfa_token": "hsm_x", "code": "123456", "recovery_code": "aaaa-bbbb-cccc-dddd"},
        {"mfa_token": "hsm_x", "recovery_code": "not a recovery code"},
        {"mfa_token": "x" * 300, "code": "123456"},
        {"mfa_token": None, "code": "123456"},
    ],
)
async def test_bad_second_steps_are_a_clear_4xx(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await client.post("/v1/auth/mfa", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error", "detail"}


async def test_bad_bodies_of_the_enrolment_routes_are_a_clear_4xx(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    await client.post("/v1/users/me/mfa/totp", headers=bearer(tokens))
    body: object  # bad bodies of every shape
    for body in ({}, {"code": None}, {"code": 12}, {"code": "x" * 5000}, {"code": "12 34 5"}, [1]):
        response = await client.post("/v1/users/me/mfa/totp/confirm", json=body, headers=bearer(tokens))
        assert 400 <= response.status_code < 500, response.text
    for body in ({}, {"password": PASSWORD}, {"code": "123456"}, {"password": 1, "code": "123456"}):
        response = await client.request("DELETE", "/v1/users/me/mfa", json=body, headers=bearer(tokens))
        assert 400 <= response.status_code < 500, response.text
    response = await client.post(
        "/v1/users/me/mfa/totp/confirm",
        content=b"\xff\xfe",
        headers={**bearer(tokens), "content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text


# --- lockout ------------------------------------------------------------------------------------


async def test_wrong_codes_count_toward_the_lockout_like_wrong_passwords(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    for _ in range(2):  # two wrong passwords ...
        wrong = await client.post("/v1/auth/login", json={"username": user["username"], "password": "wrong one!"})
        assert wrong.status_code == 401
    mfa_token = await password_step(client, user["username"])  # (a right password resets nothing)
    for _ in range(3):  # ... and three wrong codes make five
        assert_error_with(await second_step(client, mfa_token, code=wrong_code(factor.secret)), 401, "invalid_code")
    blocked = await second_step(client, mfa_token, code=code(factor.secret))
    assert_error(blocked, 429, "too_many_attempts")
    assert int(blocked.headers["retry-after"]) > 0
    refused = await client.post("/v1/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert_error(refused, 429, "too_many_attempts")
    # The real user from another address is not locked out.
    elsewhere = await password_step(other_client, user["username"])
    assert (await second_step(other_client, elsewhere, code=code(factor.secret))).status_code == 200
    failed = await events_of(ctx, "mfa_failed", user["id"])
    assert len(failed) == 3 and failed[0]["detail"]["kind"] == "code"
    assert await events_of(ctx, "login_locked", user["id"])


async def test_wrong_recovery_codes_count_toward_the_lockout(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    mfa_token = await password_step(client, user["username"])
    for _ in range(5):
        wrong = await second_step(client, mfa_token, recovery_code="aaaa-bbbb-cccc-dddd")
        assert_error_with(wrong, 401, "invalid_code")
    blocked = await second_step(client, mfa_token, recovery_code=factor.recovery_codes[0])
    assert_error(blocked, 429, "too_many_attempts")


# --- turning it off -------------------------------------------------------------------------------


async def test_turning_the_factor_off_needs_password_and_code_and_ends_every_other_session(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    here = (await second_step(client, await password_step(client, user["username"]), code=code(factor.secret))).json()
    there_response = await second_step(
        client, await password_step(client, user["username"]), recovery_code=factor.recovery_codes[0]
    )
    there = there_response.json()
    wrong_password = await client.request(
        "DELETE",
        "/v1/users/me/mfa",
        json={"password": "not my password", "recovery_code": factor.recovery_codes[1]},
        headers=bearer(here),
    )
    assert_error(wrong_password, 403, "invalid_credentials")
    wrong_code_ = await client.request(
        "DELETE",
        "/v1/users/me/mfa",
        json={"password": PASSWORD, "recovery_code": "aaaa-bbbb-cccc-dddd"},
        headers=bearer(here),
    )
    assert_error(wrong_code_, 403, "invalid_code")
    done = await client.request(
        "DELETE",
        "/v1/users/me/mfa",
        json={"password": PASSWORD, "recovery_code": factor.recovery_codes[1]},
        headers=bearer(here),
    )
    assert done.status_code == 204, done.text
    assert (await client.get("/v1/users/me", headers=bearer(here))).status_code == 200
    assert_error(await client.get("/v1/users/me", headers=bearer(there)), 401, "invalid_token")
    # The password alone logs in again; nothing of the factor is left.
    await users.login(user["username"])
    async with ctx.db.read() as tx:
        for table in (tables.user_totp, tables.recovery_codes):
            left = await tx.execute(sa.select(sa.func.count()).where(table.c.user_id == user["id"]))
            assert left.scalar_one() == 0
    assert len(await events_of(ctx, "mfa_disabled", user["id"])) == 1
    assert len(await events_of(ctx, "mfa_failed", user["id"])) == 1


async def test_turning_off_a_factor_that_is_not_on_is_404(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    response = await client.request(
        "DELETE", "/v1/users/me/mfa", json={"password": PASSWORD, "code": "123456"}, headers=bearer(tokens)
    )
    assert_error(response, 404, "not_found")


async def test_confirming_ends_every_other_session(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    await enrol(client, tokens)
    assert (await client.get("/v1/users/me", headers=bearer(tokens))).status_code == 200
    assert_error(await client.get("/v1/users/me", headers=bearer(other)), 401, "invalid_token")
    stale = await client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert stale.status_code == 401


# --- the OAuth token endpoint --------------------------------------------------------------------


async def test_the_password_grant_of_a_user_with_a_factor_gives_no_tokens_without_it(
    client: httpx.AsyncClient, users: Users
) -> None:
    user, tokens = await users.new()
    factor = await enrol(client, tokens)
    response = await client.post(
        "/v1/auth/token", data={"grant_type": "password", "username": user["username"], "password": PASSWORD}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_grant" and body["mfa_required"] is True
    assert "access_token" not in body and body["mfa_token"].startswith("hsm_")
    done = await second_step(client, body["mfa_token"], code=code(factor.secret))
    assert done.status_code == 200, done.text
    refreshed = await client.post(
        "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": done.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text


def assert_error_with(response: httpx.Response, status: int, code_: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code_, response.text
