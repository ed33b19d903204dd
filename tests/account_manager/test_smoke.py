from __future__ import annotations

import httpx

from tests.conftest import Users, bearer


async def test_register_login_and_read_me(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    response = await client.get("/v1/users/me", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == user["id"]
