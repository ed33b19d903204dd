"""The admin views of the account manager (SPEC §4, §7): users, activity events and stats. Admin reads
and changes; support reads only; a user sees none of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest

from account_manager.accounts import create_user
from shared.context import Context
from shared.models import Role
from tests.conftest import Users, assert_error, bearer

PASSWORD = "correct horse battery"
IP = "203.0.113.7"


async def list_users(client: httpx.AsyncClient, tokens: dict[str, Any], **params: Any) -> httpx.Response:
    return await client.get("/v1/admin/users", params=params, headers=bearer(tokens))


async def list_events(client: httpx.AsyncClient, tokens: dict[str, Any], **params: Any) -> httpx.Response:
    return await client.get("/v1/admin/events", params=params, headers=bearer(tokens))


async def set_disabled(
    client: httpx.AsyncClient, tokens: dict[str, Any], user_id: str, disabled: bool
) -> httpx.Response:
    return await client.patch(f"/v1/admin/users/{user_id}", json={"disabled": disabled}, headers=bearer(tokens))


def ts(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"username": username, "password": password})


# --- users --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "support"])
async def test_admin_and_support_list_users(client: httpx.AsyncClient, users: Users, ctx: Context, role: str) -> None:
    user, _ = await users.new()
    _, reader = await users.admin(ctx, role)
    response = await list_users(client, reader)
    assert response.status_code == 200, response.text
    assert user["id"] in {row["id"] for row in response.json()}


@pytest.mark.parametrize("role", ["user", "manufacturer"])
async def test_other_roles_may_not_list_users(client: httpx.AsyncClient, users: Users, ctx: Context, role: str) -> None:
    _, tokens = await users.admin(ctx, role)
    assert_error(await list_users(client, tokens), 403)


async def test_listing_users_without_token_is_401(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/admin/users"), 401, "invalid_token")


async def test_user_list_shows_last_login_active_sessions_and_disabled(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, _ = await users.new()
    await users.login(user["username"])
    never = await users.register()
    _, admin = await users.admin(ctx)
    rows = {row["id"]: row for row in (await list_users(client, admin)).json()}
    assert rows[user["id"]]["active_sessions"] == 2
    assert rows[user["id"]]["disabled"] is False
    assert datetime.fromisoformat(rows[user["id"]]["last_login_at"].replace("Z", "+00:00"))
    assert rows[never["id"]]["last_login_at"] is None
    assert rows[never["id"]]["active_sessions"] == 0
    assert rows[user["id"]]["username"] == user["username"]
    assert rows[user["id"]]["role"] == "user"


async def test_user_list_gives_the_total_in_x_total_count(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    for _ in range(3):
        await users.register()
    _, admin = await users.admin(ctx)
    response = await list_users(client, admin)
    assert response.headers["x-total-count"] == "4"
    assert len(response.json()) == 4


async def test_user_list_takes_limit_and_offset(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    for _ in range(4):
        await users.register()
    _, admin = await users.admin(ctx)
    everyone = [row["id"] for row in (await list_users(client, admin)).json()]
    page = await list_users(client, admin, limit=2, offset=1)
    assert page.status_code == 200, page.text
    assert [row["id"] for row in page.json()] == everyone[1:3]
    assert page.headers["x-total-count"] == "5"
    assert (await list_users(client, admin, offset=5)).json() == []


async def test_user_list_gives_50_by_default(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    for n in range(52):
        await create_user(ctx, username=f"bulk{n:02d}", password=PASSWORD, role=Role.USER)
    _, admin = await users.admin(ctx)
    response = await list_users(client, admin)
    assert len(response.json()) == 50
    assert response.headers["x-total-count"] == "53"


@pytest.mark.parametrize("limit", [0, 501])
async def test_user_list_limit_out_of_range_is_422(
    client: httpx.AsyncClient, users: Users, ctx: Context, limit: int
) -> None:
    _, admin = await users.admin(ctx)
    response = await list_users(client, admin, limit=limit)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "detail"}


async def test_user_list_filters_by_query(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    wanted = await users.register("needle_one")
    await users.register("haystack")
    _, admin = await users.admin(ctx)
    response = await list_users(client, admin, query="NEEDLE")
    assert [row["id"] for row in response.json()] == [wanted["id"]]
    assert response.headers["x-total-count"] == "1"


async def test_user_query_matches_the_start_of_a_username_not_its_middle(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    await users.register("haystack_needle")
    _, admin = await users.admin(ctx)
    response = await list_users(client, admin, query="needle")
    assert response.json() == []
    assert response.headers["x-total-count"] == "0"


async def test_user_query_matches_the_start_of_an_email_in_any_case(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    wanted, tokens = await users.new()
    patched = await client.patch("/v1/users/me", json={"email": "Grace.Hopper@example.com"}, headers=bearer(tokens))
    assert patched.status_code == 200, patched.text
    _, admin = await users.admin(ctx)
    assert [row["id"] for row in (await list_users(client, admin, query="grace.h")).json()] == [wanted["id"]]
    assert (await list_users(client, admin, query="example.com")).json() == []


async def test_user_query_matches_a_whole_user_id(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    wanted = await users.register()
    _, admin = await users.admin(ctx)
    response = await list_users(client, admin, query=wanted["id"])
    assert [row["id"] for row in response.json()] == [wanted["id"]]
    assert (await list_users(client, admin, query=wanted["id"][:10])).json() == []


async def test_user_list_filters_by_role(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    await users.new()
    support, _ = await users.admin(ctx, "support")
    _, admin = await users.admin(ctx)
    response = await list_users(client, admin, role="support")
    assert [row["username"] for row in response.json()] == [support["username"]]
    assert response.headers["x-total-count"] == "1"


async def test_admin_creates_a_user_of_any_role(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    _, admin = await users.admin(ctx)
    body = {"username": "helpdesk", "password": PASSWORD, "role": "support"}
    response = await client.post("/v1/admin/users", json=body, headers=bearer(admin))
    assert response.status_code == 201, response.text
    assert response.json()["username"] == "helpdesk"
    assert response.json()["role"] == "support"
    tokens = (await login(client, "helpdesk")).json()
    assert jwt.decode(tokens["access_token"], options={"verify_signature": False})["role"] == "support"
    assert (await list_users(client, tokens)).status_code == 200
    events = (await list_events(client, admin, type="user_created")).json()
    made = [event for event in events if event["detail"]["username"] == "helpdesk"]
    admin_id = jwt.decode(admin["access_token"], options={"verify_signature": False})["sub"]
    assert [(e["actor_type"], e["actor_id"], e["detail"]["role"]) for e in made] == [("user", admin_id, "support")]
    assert made[0]["detail"]["user_id"] == response.json()["id"]


async def test_admin_creating_a_taken_username_is_409(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    user = await users.register()
    _, admin = await users.admin(ctx)
    body = {"username": user["username"].upper(), "password": PASSWORD, "role": "user"}
    assert_error(await client.post("/v1/admin/users", json=body, headers=bearer(admin)), 409, "username_taken")


@pytest.mark.parametrize("role", ["support", "user"])
async def test_only_admin_creates_users(client: httpx.AsyncClient, users: Users, ctx: Context, role: str) -> None:
    _, tokens = await users.admin(ctx, role)
    body = {"username": "sneaky", "password": PASSWORD, "role": "admin"}
    response = await client.post("/v1/admin/users", json=body, headers=bearer(tokens))
    assert_error(response, 403)
    assert_error(await login(client, "sneaky"), 401, "invalid_credentials")


async def test_disabling_a_user_refuses_its_access_token_at_once(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    _, admin = await users.admin(ctx)
    response = await set_disabled(client, admin, user["id"], True)
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is True
    assert response.json()["active_sessions"] == 0
    for session in (tokens, other):
        assert_error(await client.get("/v1/users/me", headers=bearer(session)), 401, "invalid_token")
        refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
        assert_error(refreshed, 401, "invalid_grant")


async def test_disabled_user_login_is_403_account_disabled(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user = await users.register()
    _, admin = await users.admin(ctx)
    assert (await set_disabled(client, admin, user["id"], True)).status_code == 200
    assert_error(await login(client, user["username"]), 403, "account_disabled")


async def test_enabling_a_user_again_lets_it_log_in(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    user = await users.register()
    _, admin = await users.admin(ctx)
    assert (await set_disabled(client, admin, user["id"], True)).status_code == 200
    response = await set_disabled(client, admin, user["id"], False)
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is False
    tokens = await login(client, user["username"])
    assert tokens.status_code == 200, tokens.text
    assert (await client.get("/v1/users/me", headers=bearer(tokens.json()))).status_code == 200


async def test_support_may_not_change_users(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    user, tokens = await users.new()
    _, support = await users.admin(ctx, "support")
    assert_error(await set_disabled(client, support, user["id"], True), 403)
    response = await client.patch(f"/v1/admin/users/{user['id']}", json={"role": "admin"}, headers=bearer(support))
    assert_error(response, 403)
    assert (await client.get("/v1/users/me", headers=bearer(tokens))).status_code == 200


async def test_admin_changes_a_users_role(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    user, _ = await users.new()
    _, admin = await users.admin(ctx)
    response = await client.patch(f"/v1/admin/users/{user['id']}", json={"role": "support"}, headers=bearer(admin))
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "support"
    assert (await list_users(client, (await login(client, user["username"])).json())).status_code == 200


async def test_patching_an_unknown_user_is_404(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    _, admin = await users.admin(ctx)
    assert_error(await set_disabled(client, admin, "nosuchuser", True), 404)


# --- events -------------------------------------------------------------------------------------


async def test_events_are_listed_newest_first(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    await users.new()
    _, admin = await users.admin(ctx)
    response = await list_events(client, admin)
    assert response.status_code == 200, response.text
    found = response.json()
    assert len(found) >= 4
    ids = [event["id"] for event in found]
    assert ids == sorted(ids, reverse=True)
    stamps = [ts(event) for event in found]
    assert stamps == sorted(stamps, reverse=True)
    assert found[0]["type"] == "login_succeeded"  # the admin's own login, the last thing that happened
    for event in found:
        assert {"id", "ts", "type", "actor_type", "actor_id", "device_uid", "ip", "detail"} <= set(event)


@pytest.mark.parametrize("role", ["admin", "support"])
async def test_admin_and_support_read_events(client: httpx.AsyncClient, users: Users, ctx: Context, role: str) -> None:
    _, reader = await users.admin(ctx, role)
    assert (await list_events(client, reader)).status_code == 200


async def test_users_may_not_read_events(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert_error(await list_events(client, tokens), 403)


async def test_events_give_the_total_in_x_total_count(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    await users.new()
    _, admin = await users.admin(ctx)
    response = await list_events(client, admin, limit=1)
    assert len(response.json()) == 1
    total = int(response.headers["x-total-count"])
    assert total == len((await list_events(client, admin, limit=500)).json())
    assert total >= 4


async def test_events_filter_by_type(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    await users.new()
    await users.new()
    _, admin = await users.admin(ctx)
    response = await list_events(client, admin, type="user_registered")
    assert [event["type"] for event in response.json()] == ["user_registered"] * 2
    assert response.headers["x-total-count"] == "2"
    (created,) = (await list_events(client, admin, type="user_created")).json()  # the admin, by the operator
    assert created["actor_type"] == "system" and created["detail"]["role"] == "admin"


async def test_events_filter_by_user_id(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    user, _ = await users.new()
    await users.new()
    _, admin = await users.admin(ctx)
    found = (await list_events(client, admin, user_id=user["id"])).json()
    assert {event["type"] for event in found} == {"user_registered", "login_succeeded"}
    assert {event["actor_id"] for event in found} == {user["id"]}


async def test_events_filter_by_since(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    await users.new()
    _, admin = await users.admin(ctx)
    everything = (await list_events(client, admin)).json()
    pivot = everything[1]["ts"]
    found = (await list_events(client, admin, since=pivot)).json()
    assert len(found) >= 2
    assert all(ts(event) >= ts(everything[1]) for event in found)
    assert {event["id"] for event in found} == {e["id"] for e in everything if ts(e) >= ts(everything[1])}
    assert (await list_events(client, admin, since="2999-01-01T00:00:00Z")).json() == []


async def _register(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    return str((await users.register())["id"])


async def _login_succeeded(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    return str((await users.new())[0]["id"])


async def _login_failed(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    user = await users.register()
    assert (await login(client, user["username"], "wrong password")).status_code == 401
    return str(user["id"])


async def _logout(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    user, tokens = await users.new()
    assert (await client.post("/v1/auth/logout", headers=bearer(tokens))).status_code == 204
    return str(user["id"])


async def _token_refreshed(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    user, tokens = await users.new()
    response = await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200, response.text
    return str(user["id"])


async def _refresh_reuse_detected(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    user, first = await users.new()
    second = (await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert (await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})).status_code == 200
    reused = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401, reused.text
    return str(user["id"])


async def _password_changed(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    user, tokens = await users.new()
    body = {"current_password": PASSWORD, "new_password": "staple lantern orbit 42"}
    assert (await client.post("/v1/users/me/password", json=body, headers=bearer(tokens))).status_code == 204
    return str(user["id"])


async def _session_revoked(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    sid = jwt.decode(other["access_token"], options={"verify_signature": False})["sid"]
    assert (await client.delete(f"/v1/auth/sessions/{sid}", headers=bearer(tokens))).status_code == 204
    return str(user["id"])


async def _user_updated(client: httpx.AsyncClient, users: Users, ctx: Context) -> str:
    user, tokens = await users.new()
    response = await client.patch("/v1/users/me", json={"email": "u@example.com"}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return str(user["id"])


@pytest.mark.parametrize(
    ("event_type", "act"),
    [
        ("user_registered", _register),
        ("login_succeeded", _login_succeeded),
        ("login_failed", _login_failed),
        ("logout", _logout),
        ("token_refreshed", _token_refreshed),
        ("refresh_reuse_detected", _refresh_reuse_detected),
        ("password_changed", _password_changed),
        ("session_revoked", _session_revoked),
        ("user_updated", _user_updated),
    ],
)
async def test_account_activity_writes_an_event_with_actor_and_ip(
    client: httpx.AsyncClient,
    users: Users,
    ctx: Context,
    event_type: str,
    act: Callable[[httpx.AsyncClient, Users, Context], Awaitable[str]],
) -> None:
    user_id = await act(client, users, ctx)
    _, admin = await users.admin(ctx)
    found = (await list_events(client, admin, type=event_type, user_id=user_id)).json()
    assert len(found) == 1, found
    event = found[0]
    assert event["type"] == event_type
    assert event["actor_type"] == "user"
    assert event["actor_id"] == user_id
    assert event["ip"] == IP


async def test_admin_change_of_a_user_writes_user_updated_by_the_admin(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user = await users.register()
    _, admin = await users.admin(ctx)
    admin_id = jwt.decode(admin["access_token"], options={"verify_signature": False})["sub"]
    assert (await set_disabled(client, admin, user["id"], True)).status_code == 200
    found = (await list_events(client, admin, type="user_updated")).json()
    assert len(found) == 1, found
    assert found[0]["actor_type"] == "user"
    assert found[0]["actor_id"] == admin_id
    assert found[0]["ip"] == IP
    assert found[0]["detail"]["user_id"] == user["id"]
    assert found[0]["detail"]["disabled"] is True


# --- stats --------------------------------------------------------------------------------------


async def test_stats_count_users_sessions_and_logins(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    first, first_tokens = await users.new()
    await users.login(first["username"])
    await users.new()
    assert (await login(client, first["username"], "wrong password")).status_code == 401
    assert (await login(client, "nobody", "wrong password")).status_code == 401
    assert (await client.post("/v1/auth/logout", headers=bearer(first_tokens))).status_code == 204
    _, admin = await users.admin(ctx)
    response = await client.get("/v1/admin/stats", headers=bearer(admin))
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["users"] == 3
    assert stats["devices"] == 0
    assert stats["devices_online"] == 0
    assert stats["sessions_active"] == 3  # four logins, one logged out
    assert stats["logins_24h"] == 4
    assert stats["login_failures_24h"] == 2


async def test_support_reads_stats(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    _, support = await users.admin(ctx, "support")
    response = await client.get("/v1/admin/stats", headers=bearer(support))
    assert response.status_code == 200, response.text
    assert {"users", "devices", "devices_online", "sessions_active", "logins_24h", "login_failures_24h"} <= set(
        response.json()
    )


async def test_users_may_not_read_stats(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert_error(await client.get("/v1/admin/stats", headers=bearer(tokens)), 403)
