"""The caller's own account (SPEC §4 `/v1/users/me`): read it, set the email, change the password."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Users, assert_error, bearer

PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple lantern orbit 42"


async def me(client: httpx.AsyncClient, tokens: dict[str, Any]) -> httpx.Response:
    return await client.get("/v1/users/me", headers=bearer(tokens))


async def change_password(
    client: httpx.AsyncClient, tokens: dict[str, Any], current: str = PASSWORD, new: str = NEW_PASSWORD
) -> httpx.Response:
    body = {"current_password": current, "new_password": new}
    return await client.post("/v1/users/me/password", json=body, headers=bearer(tokens))


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"username": username, "password": password})


# --- /v1/users/me ---------------------------------------------------------------------------------


async def test_me_returns_the_caller(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    await users.new()  # someone else, who must not be returned
    response = await me(client, tokens)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == user["id"]
    assert body["username"] == user["username"]
    assert body["role"] == "user"
    assert body["email"] is None
    assert "password" not in body and "password_hash" not in body


async def test_me_without_token_is_401_invalid_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/users/me")
    assert_error(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_me_accepts_the_jwt_authorization_scheme(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    response = await client.get("/v1/users/me", headers={"Authorization": f"JWT {tokens['access_token']}"})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == user["id"]


async def test_patch_me_sets_the_email(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    response = await client.patch("/v1/users/me", json={"email": "me@example.com"}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "me@example.com"
    assert response.json()["id"] == user["id"]
    assert (await me(client, tokens)).json()["email"] == "me@example.com"


async def test_patch_me_with_null_clears_the_email(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    await client.patch("/v1/users/me", json={"email": "me@example.com"}, headers=bearer(tokens))
    response = await client.patch("/v1/users/me", json={"email": None}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    assert (await me(client, tokens)).json()["email"] is None


async def test_patch_me_with_an_invalid_email_is_422(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    response = await client.patch("/v1/users/me", json={"email": "not an email"}, headers=bearer(tokens))
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "detail"}
    assert (await me(client, tokens)).json()["email"] is None


# --- password change ------------------------------------------------------------------------------


async def test_password_change_is_204_and_keeps_the_current_session(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert (await change_password(client, tokens)).status_code == 204
    assert (await me(client, tokens)).status_code == 200
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text


async def test_password_change_revokes_every_other_session(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    others = [await users.login(user["username"]) for _ in range(2)]
    assert (await change_password(client, tokens)).status_code == 204
    for other in others:
        response = await me(client, other)
        assert_error(response, 401, "invalid_token")
        refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
        assert_error(refreshed, 401, "invalid_grant")
    sessions = (await client.get("/v1/auth/sessions", headers=bearer(tokens))).json()
    assert len(sessions) == 1 and sessions[0]["current"] is True


async def test_after_password_change_only_the_new_password_logs_in(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    assert (await change_password(client, tokens)).status_code == 204
    assert_error(await login(client, user["username"], PASSWORD), 401, "invalid_credentials")
    assert (await login(client, user["username"], NEW_PASSWORD)).status_code == 200


async def test_password_change_with_wrong_current_password_is_403(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    response = await change_password(client, tokens, current="not my password")
    assert response.status_code == 403, response.text
    assert set(response.json()) == {"error", "detail"}
    assert (await me(client, tokens)).status_code == 200  # the caller's token is fine
    assert (await me(client, other)).status_code == 200  # and nothing was revoked
    assert (await login(client, user["username"], PASSWORD)).status_code == 200


@pytest.mark.parametrize("weak", ["short1!", "password123", "qwertyuiop"])
async def test_password_change_to_a_weak_password_is_422(client: httpx.AsyncClient, users: Users, weak: str) -> None:
    user, tokens = await users.new()
    assert_error(await change_password(client, tokens, new=weak), 422)
    assert (await login(client, user["username"], PASSWORD)).status_code == 200


async def test_password_change_without_token_is_401(client: httpx.AsyncClient) -> None:
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert_error(await client.post("/v1/users/me/password", json=body), 401, "invalid_token")


async def test_wrong_current_passwords_are_throttled_like_logins(client: httpx.AsyncClient, users: Users) -> None:
    """A stolen access token must not buy unlimited guesses at the password (issue 17: twelve wrong
    `current_password` went unthrottled). They count where wrong logins count, and the login form,
    asked from the same address, is blocked too."""
    user, tokens = await users.new()
    for _ in range(5):
        assert_error(await change_password(client, tokens, current="not it at all"), 403, "invalid_credentials")
    blocked = await change_password(client, tokens)  # even the right one: a refused guess tells nothing
    assert_error(blocked, 429, "too_many_attempts")
    assert int(blocked.headers["retry-after"]) > 0
    assert_error(await login(client, user["username"], PASSWORD), 429, "too_many_attempts")
    assert (await me(client, tokens)).status_code == 200  # the session itself is untouched
