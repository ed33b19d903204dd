"""Registration (SPEC §4 `POST /v1/auth/register`): who may register, what a new account looks like,
and which usernames and passwords are refused."""

from __future__ import annotations

import re

import httpx
import pytest

from account_manager import store
from account_manager.accounts import new_user_id
from shared.clock import utcnow
from shared.context import Context
from shared.errors import UsernameTakenError
from tests.conftest import Users, assert_error, bearer

STRONG = "correct horse battery"


async def register(client: httpx.AsyncClient, username: str, password: str = STRONG) -> httpx.Response:
    return await client.post("/v1/auth/register", json={"username": username, "password": password})


async def test_register_returns_id_username_and_user_role(client: httpx.AsyncClient) -> None:
    response = await register(client, "alice")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "username", "role"}
    assert body["username"] == "alice"
    assert body["role"] == "user"


async def test_user_ids_are_lowercase_letters_and_digits_of_one_length(client: httpx.AsyncClient) -> None:
    ids = []
    for name in ("idcheck1", "idcheck2", "idcheck3", "idcheck4"):
        response = await register(client, name)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    for user_id in ids:
        assert re.fullmatch(r"[a-z0-9]+", user_id), user_id
        assert "-" not in user_id
    assert len({len(user_id) for user_id in ids}) == 1
    assert len(set(ids)) == len(ids)


async def test_registered_user_can_log_in_and_read_itself(client: httpx.AsyncClient, users: Users) -> None:
    response = await client.post(
        "/v1/auth/register", json={"username": "bob", "password": STRONG, "email": "bob@example.com"}
    )
    assert response.status_code == 201, response.text
    tokens = await users.login("bob", STRONG)
    me = await client.get("/v1/users/me", headers=bearer(tokens))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == response.json()["id"]
    assert me.json()["email"] == "bob@example.com"
    assert me.json()["role"] == "user"


async def test_taken_username_is_409_username_taken(client: httpx.AsyncClient) -> None:
    assert (await register(client, "carol")).status_code == 201
    assert_error(await register(client, "carol"), 409, "username_taken")


async def test_username_is_taken_regardless_of_case(client: httpx.AsyncClient) -> None:
    assert (await register(client, "Dave")).status_code == 201
    assert_error(await register(client, "dave"), 409, "username_taken")
    assert_error(await register(client, "DAVE"), 409, "username_taken")


async def test_password_shorter_than_8_characters_is_422(client: httpx.AsyncClient) -> None:
    assert_error(await register(client, "erin", "x7#Qz!p"), 422)


@pytest.mark.parametrize("password", ["password123", "qwertyuiop"])
async def test_common_password_is_422(client: httpx.AsyncClient, password: str) -> None:
    assert_error(await register(client, "frank", password), 422)


async def test_refused_registration_creates_no_account(client: httpx.AsyncClient) -> None:
    assert (await register(client, "grace", "short")).status_code == 422
    assert (await register(client, "grace")).status_code == 201


@pytest.mark.parametrize("settings_overrides", [pytest.param({"open_registration": False}, id="closed")])
async def test_registration_closed_is_403(client: httpx.AsyncClient) -> None:
    response = await register(client, "heidi")
    assert response.status_code == 403, response.text
    assert set(response.json()) == {"error", "detail"}
    login = await client.post("/v1/auth/login", json={"username": "heidi", "password": STRONG})
    assert login.status_code == 401  # nothing was created


async def test_a_name_taken_after_the_look_up_is_refused_by_the_store_as_username_taken(
    client: httpx.AsyncClient, ctx: Context
) -> None:
    # Two registrations of one name at once both pass the look-up; the store's insert lets one win.
    assert (await register(client, "erin")).status_code == 201
    with pytest.raises(UsernameTakenError):
        async with ctx.db.write() as tx:
            await store.insert_user(
                tx, user_id=new_user_id(), username="ERIN", password_hash="x", role="user", email=None, now=utcnow()
            )
