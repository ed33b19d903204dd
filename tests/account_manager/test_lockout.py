"""Login throttling (SPEC §4, SECURITY.md "Lockout can become the attack"): 5 failures for one username
from one IP, or 20 from one IP, block that pair or that IP for a while with 429 and Retry-After; the real
user from another address still gets in; unknown users and wrong passwords look the same."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from shared.context import Context
from tests.conftest import Users, bearer

OTHER_IP = "198.51.100.9"


@pytest.fixture
async def other_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The same server, seen from another address."""
    transport = httpx.ASGITransport(app=app.state.lifespan_app, client=(OTHER_IP, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"username": username, "password": password})


def assert_invalid_credentials(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_credentials", response.text


def assert_too_many_attempts(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "too_many_attempts", response.text
    assert set(response.json()) == {"error", "detail"}
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) > 0, response.headers
    return int(retry_after)


async def test_unknown_username_and_wrong_password_get_the_same_answer(client: httpx.AsyncClient, users: Users) -> None:
    user = await users.register()
    wrong_password = await login(client, user["username"], "not the password at all")
    unknown_user = await login(client, f"nobody{secrets.token_hex(4)}", "not the password at all")
    assert_invalid_credentials(wrong_password)
    assert wrong_password.status_code == unknown_user.status_code
    assert wrong_password.json() == unknown_user.json()
    assert wrong_password.headers.get("www-authenticate") == unknown_user.headers.get("www-authenticate")


async def test_five_failures_for_one_username_from_one_ip_block_it_even_with_the_right_password(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    # The admin who reads the events logs in first, from the address about to be throttled.
    _, admin = await users.admin(ctx)
    user = await users.register()
    for _ in range(5):
        assert_invalid_credentials(await login(client, user["username"], "wrong password guess"))

    assert_too_many_attempts(await login(client, user["username"], user["password"]))

    # The real user from another address is not locked out (Keycloak #26172).
    response = await login(other_client, user["username"], user["password"])
    assert response.status_code == 200, response.text
    assert (await client.get("/v1/users/me", headers=bearer(response.json()))).status_code == 200
    # ...and the first address is still blocked for this username.
    assert_too_many_attempts(await login(client, user["username"], user["password"]))

    response = await client.get("/v1/admin/events", params={"type": "login_locked"}, headers=bearer(admin))
    assert response.status_code == 200, response.text
    locked = [event for event in response.json() if event["type"] == "login_locked"]
    assert locked, response.json()
    assert any(event["ip"] == "203.0.113.7" and event["detail"].get("username") == user["username"] for event in locked)


async def test_a_successful_login_forgets_the_failures_before_it(client: httpx.AsyncClient, users: Users) -> None:
    # A typo or two, then the right password: the count for this username and address starts again,
    # so four more typos later the owner still gets in (without the reset that would be 8 of 5).
    user = await users.register()
    for _ in range(4):
        assert_invalid_credentials(await login(client, user["username"], "wrong password guess"))
    assert (await login(client, user["username"], user["password"])).status_code == 200
    for _ in range(4):
        assert_invalid_credentials(await login(client, user["username"], "wrong password guess"))
    response = await login(client, user["username"], user["password"])
    assert response.status_code == 200, response.text


async def test_a_block_of_one_username_does_not_block_other_usernames_from_that_ip(
    client: httpx.AsyncClient, users: Users
) -> None:
    target = await users.register()
    bystander = await users.register()
    for _ in range(5):
        assert_invalid_credentials(await login(client, target["username"], "wrong password guess"))
    assert_too_many_attempts(await login(client, target["username"], target["password"]))
    response = await login(client, bystander["username"], bystander["password"])
    assert response.status_code == 200, response.text


async def test_twenty_failures_from_one_ip_over_many_usernames_block_that_ip(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient, users: Users
) -> None:
    user = await users.register()
    for attempt in range(20):
        response = await login(client, f"guess{attempt}{secrets.token_hex(3)}", "wrong password guess")
        assert_invalid_credentials(response)

    # Another username, with its right password, from the same address: the address is blocked.
    assert_too_many_attempts(await login(client, user["username"], user["password"]))

    response = await login(other_client, user["username"], user["password"])
    assert response.status_code == 200, response.text
