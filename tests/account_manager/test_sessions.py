"""Sessions (SPEC §4): log in (JSON, OAuth2 password form, token endpoint), refresh with rotation,
the retry grace and reuse detection, log out, and the caller's list of sessions."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jwt
import pytest

from shared.settings import Settings
from tests.conftest import Users, assert_error, bearer

PASSWORD = "correct horse battery"
PAIR_KEYS = {"access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in"}
no_grace = pytest.mark.parametrize("settings_overrides", [pytest.param({"refresh_reuse_grace": 0}, id="grace0")])


def assert_invalid_token(response: httpx.Response) -> None:
    assert_error(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers.get("www-authenticate", "")


def assert_pair(body: dict[str, Any], settings: Settings) -> None:
    assert set(body) == PAIR_KEYS, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.access_ttl
    assert body["refresh_expires_in"] == settings.refresh_ttl
    assert isinstance(body["access_token"], str) and isinstance(body["refresh_token"], str)


def sid_of(tokens: dict[str, Any]) -> str:
    sid: str = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    return sid


async def me(client: httpx.AsyncClient, tokens: dict[str, Any]) -> httpx.Response:
    return await client.get("/v1/users/me", headers=bearer(tokens))


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})


# --- login ------------------------------------------------------------------------------------


async def test_login_with_json_returns_token_pair(client: httpx.AsyncClient, users: Users, settings: Settings) -> None:
    user = await users.register()
    response = await client.post("/v1/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert_pair(response.json(), settings)
    assert (await me(client, response.json())).json()["id"] == user["id"]


async def test_refresh_token_is_opaque_and_at_least_256_bits(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    token = tokens["refresh_token"]
    assert token.count(".") != 2  # not a JWT: nothing in it to read
    assert len(token) >= 43  # 256 bits take 43 characters of base64url
    assert token != (await users.login((await users.register())["username"]))["refresh_token"]


async def test_login_accepts_oauth2_password_form(client: httpx.AsyncClient, users: Users, settings: Settings) -> None:
    user = await users.register()
    form = {"grant_type": "password", "username": user["username"], "password": PASSWORD, "scope": ""}
    response = await client.post("/v1/auth/login", data=form)
    assert response.status_code == 200, response.text
    assert_pair(response.json(), settings)
    assert (await me(client, response.json())).status_code == 200


async def test_login_with_wrong_password_is_401_invalid_credentials(client: httpx.AsyncClient, users: Users) -> None:
    user = await users.register()
    response = await client.post("/v1/auth/login", json={"username": user["username"], "password": "wrong password"})
    assert_error(response, 401, "invalid_credentials")


async def test_login_of_unknown_user_is_401_invalid_credentials(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert_error(response, 401, "invalid_credentials")


# --- the OAuth 2 token endpoint -------------------------------------------------------------------


async def test_token_endpoint_password_grant_returns_token_pair(
    client: httpx.AsyncClient, users: Users, settings: Settings
) -> None:
    user = await users.register()
    form = {"grant_type": "password", "username": user["username"], "password": PASSWORD}
    response = await client.post("/v1/auth/token", data=form)
    assert response.status_code == 200, response.text
    assert_pair(response.json(), settings)
    assert (await me(client, response.json())).json()["id"] == user["id"]


async def test_token_endpoint_refresh_token_grant_rotates_the_pair(
    client: httpx.AsyncClient, users: Users, settings: Settings
) -> None:
    _, tokens = await users.new()
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    response = await client.post("/v1/auth/token", data=form)
    assert response.status_code == 200, response.text
    assert_pair(response.json(), settings)
    assert response.json()["refresh_token"] != tokens["refresh_token"]
    assert (await me(client, response.json())).status_code == 200


async def test_token_endpoint_responses_are_not_cached(client: httpx.AsyncClient, users: Users) -> None:
    user = await users.register()
    form = {"grant_type": "password", "username": user["username"], "password": PASSWORD}
    response = await client.post("/v1/auth/token", data=form)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"  # RFC 6749 §5.1


async def test_token_endpoint_unsupported_grant_is_400_unsupported_grant_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/token", data={"grant_type": "client_credentials"})
    assert_error(response, 400, "unsupported_grant_type")


async def test_token_endpoint_without_grant_type_is_400_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/token", data={"username": "someone", "password": PASSWORD})
    assert_error(response, 400, "invalid_request")


async def test_token_endpoint_wrong_password_is_400_invalid_grant(client: httpx.AsyncClient, users: Users) -> None:
    user = await users.register()
    form = {"grant_type": "password", "username": user["username"], "password": "wrong password"}
    assert_error(await client.post("/v1/auth/token", data=form), 400, "invalid_grant")


async def test_token_endpoint_unknown_refresh_token_is_400_invalid_grant(client: httpx.AsyncClient) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "hsr_unknown"}
    assert_error(await client.post("/v1/auth/token", data=form), 400, "invalid_grant")


# --- refresh: rotation, grace, reuse ----------------------------------------------------------------


async def test_refresh_returns_a_new_working_pair(client: httpx.AsyncClient, users: Users, settings: Settings) -> None:
    _, tokens = await users.new()
    response = await refresh(client, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    fresh = response.json()
    assert_pair(fresh, settings)
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert fresh["access_token"] != tokens["access_token"]
    assert sid_of(fresh) == sid_of(tokens)  # the same session goes on
    assert (await me(client, fresh)).status_code == 200
    assert (await refresh(client, fresh["refresh_token"])).status_code == 200


@no_grace
async def test_rotated_refresh_token_stops_working_after_the_grace_window(
    client: httpx.AsyncClient, users: Users
) -> None:
    _, tokens = await users.new()
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401


async def test_same_refresh_token_within_grace_returns_the_same_pair(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    first = await refresh(client, tokens["refresh_token"])
    second = await refresh(client, tokens["refresh_token"])
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json()["access_token"] == first.json()["access_token"]
    assert second.json()["refresh_token"] == first.json()["refresh_token"]
    assert (await me(client, second.json())).status_code == 200


async def test_concurrent_refreshes_with_one_token_get_the_same_pair(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    first, second = await asyncio.gather(
        refresh(client, tokens["refresh_token"]), refresh(client, tokens["refresh_token"])
    )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["access_token"] == second.json()["access_token"]
    assert first.json()["refresh_token"] == second.json()["refresh_token"]
    # The app stays logged in: the pair it got works, and so does its next rotation.
    assert (await me(client, first.json())).status_code == 200
    assert (await refresh(client, first.json()["refresh_token"])).status_code == 200


@no_grace
async def test_reused_refresh_token_is_401_refresh_token_reused(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200
    assert_error(await refresh(client, tokens["refresh_token"]), 401, "refresh_token_reused")


@no_grace
async def test_reused_refresh_token_revokes_the_whole_session(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    newest = (await refresh(client, tokens["refresh_token"])).json()
    assert (await me(client, newest)).status_code == 200
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401
    assert_invalid_token(await me(client, newest))
    assert_invalid_token(await me(client, tokens))
    assert_error(await refresh(client, newest["refresh_token"]), 401, "invalid_grant")


@no_grace
async def test_refresh_reuse_leaves_other_sessions_alone(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200
    assert (await refresh(client, tokens["refresh_token"])).status_code == 401
    assert (await me(client, other)).status_code == 200


async def test_unknown_refresh_token_is_401_invalid_grant(client: httpx.AsyncClient) -> None:
    assert_error(await refresh(client, "hsr_" + "A" * 43), 401, "invalid_grant")
    assert_error(await refresh(client, "not a refresh token"), 401, "invalid_grant")


async def test_token_older_than_the_last_rotation_is_refresh_token_reused(
    client: httpx.AsyncClient, users: Users
) -> None:
    _, first = await users.new()
    second = (await refresh(client, first["refresh_token"])).json()
    third = (await refresh(client, second["refresh_token"])).json()
    # Still within the grace window of its own use, but its successor has been used since.
    assert_error(await refresh(client, first["refresh_token"]), 401, "refresh_token_reused")
    assert_invalid_token(await me(client, third))
    assert_error(await refresh(client, third["refresh_token"]), 401, "invalid_grant")


# --- logout -------------------------------------------------------------------------------------


async def test_logout_revokes_that_session_at_once(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    response = await client.post("/v1/auth/logout", headers=bearer(tokens))
    assert response.status_code == 204, response.text
    assert_invalid_token(await me(client, tokens))
    assert (await me(client, other)).status_code == 200


async def test_logout_ends_the_sessions_refresh_token(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert (await client.post("/v1/auth/logout", headers=bearer(tokens))).status_code == 204
    assert_error(await refresh(client, tokens["refresh_token"]), 401, "invalid_grant")


async def test_logout_without_token_is_401_invalid_token(client: httpx.AsyncClient) -> None:
    assert_invalid_token(await client.post("/v1/auth/logout"))


async def test_logout_all_revokes_every_session_of_the_user(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    others = [await users.login(user["username"]) for _ in range(2)]
    stranger = (await users.new())[1]
    response = await client.post("/v1/auth/logout-all", headers=bearer(tokens))
    assert response.status_code == 204, response.text
    for session in (tokens, *others):
        assert_invalid_token(await me(client, session))
        assert_error(await refresh(client, session["refresh_token"]), 401, "invalid_grant")
    assert (await me(client, stranger)).status_code == 200


# --- the caller's sessions --------------------------------------------------------------------


async def test_sessions_lists_every_session_with_exactly_one_current(client: httpx.AsyncClient, users: Users) -> None:
    user = await users.register()
    phone = await users.login(user["username"], headers={"User-Agent": "phone-app/1.0"})
    laptop = await users.login(user["username"], headers={"User-Agent": "laptop-browser/2.0"})
    response = await client.get("/v1/auth/sessions", headers=bearer(phone))
    assert response.status_code == 200, response.text
    found = response.json()
    assert response.headers["x-total-count"] == "2"
    assert {s["id"] for s in found} == {sid_of(phone), sid_of(laptop)}
    for session in found:
        assert set(session) == {"id", "created_at", "last_used_at", "ip", "user_agent", "current"}
        assert session["ip"] == "203.0.113.7"
    assert [s["id"] for s in found if s["current"]] == [sid_of(phone)]
    agents = {s["id"]: s["user_agent"] for s in found}
    assert agents == {sid_of(phone): "phone-app/1.0", sid_of(laptop): "laptop-browser/2.0"}


async def test_sessions_list_leaves_out_ended_sessions(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    gone = await users.login(user["username"])
    assert (await client.post("/v1/auth/logout", headers=bearer(gone))).status_code == 204
    found = (await client.get("/v1/auth/sessions", headers=bearer(tokens))).json()
    assert [s["id"] for s in found] == [sid_of(tokens)]


async def test_delete_session_revokes_that_one_session(client: httpx.AsyncClient, users: Users) -> None:
    user, tokens = await users.new()
    other = await users.login(user["username"])
    response = await client.delete(f"/v1/auth/sessions/{sid_of(other)}", headers=bearer(tokens))
    assert response.status_code == 204, response.text
    assert_invalid_token(await me(client, other))
    assert_error(await refresh(client, other["refresh_token"]), 401, "invalid_grant")
    assert (await me(client, tokens)).status_code == 200
    found = (await client.get("/v1/auth/sessions", headers=bearer(tokens))).json()
    assert [s["id"] for s in found] == [sid_of(tokens)]


async def test_delete_session_of_another_user_is_404(client: httpx.AsyncClient, users: Users) -> None:
    _, mine = await users.new()
    _, theirs = await users.new()
    response = await client.delete(f"/v1/auth/sessions/{sid_of(theirs)}", headers=bearer(mine))
    assert_error(response, 404)
    assert (await me(client, theirs)).status_code == 200


async def test_delete_unknown_session_is_404(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    response = await client.delete("/v1/auth/sessions/doesnotexist", headers=bearer(tokens))
    assert_error(response, 404)


@no_grace
async def test_every_401_carries_www_authenticate(client: httpx.AsyncClient, users: Users) -> None:
    """SPEC §2: "401s carry WWW-Authenticate: Bearer error=\"invalid_token\"" (and RFC 7235 §3.1 requires one)."""
    user, tokens = await users.new()
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200
    answers = {
        "invalid_credentials": await client.post(
            "/v1/auth/login", json={"username": user["username"], "password": "wrong password"}
        ),
        "invalid_grant": await refresh(client, "hsr_unknown"),
        "refresh_token_reused": await refresh(client, tokens["refresh_token"]),
        "invalid_token": await me(client, tokens),
    }
    for code, response in answers.items():
        assert_error(response, 401, code)
    missing = [
        code for code, r in answers.items() if 'error="invalid_token"' not in r.headers.get("www-authenticate", "")
    ]
    assert missing == [], f"401 without WWW-Authenticate: {missing}"


# --- error bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        pytest.param("GET", "/v1/users/me", {}, 401, id="no-token"),
        pytest.param("GET", "/v1/users/me", {"headers": {"Authorization": "Bearer x.y.z"}}, 401, id="bad-token"),
        pytest.param("GET", "/v1/users/me", {"headers": {"Authorization": "Basic abc"}}, 401, id="wrong-scheme"),
        pytest.param(
            "POST",
            "/v1/auth/login",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            id="bad-json",
        ),
        pytest.param("POST", "/v1/auth/login", {"json": {"username": "x"}}, 422, id="missing-field"),
        pytest.param("POST", "/v1/auth/login", {"json": {"username": 1, "password": 2}}, 422, id="wrong-types"),
        pytest.param("POST", "/v1/auth/login", {"json": ["a", "list"]}, 400, id="not-an-object"),
        pytest.param(
            "POST", "/v1/auth/register", {"json": {"username": "x y", "password": PASSWORD}}, 422, id="bad-username"
        ),
        pytest.param("GET", "/v1/no/such/route", {}, 404, id="unknown-route"),
        pytest.param("DELETE", "/v1/auth/login", {}, 405, id="wrong-method"),
        pytest.param("POST", "/v1/auth/refresh", {"json": {}}, 422, id="refresh-without-token"),
        pytest.param(
            "POST",
            "/v1/auth/register",
            {"content": b"x" * (65 * 1024), "headers": {"Content-Type": "application/json"}},
            413,
            id="too-large",
        ),
    ],
)
async def test_every_error_body_has_exactly_error_and_detail(
    client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    if status == 401:
        assert 'error="invalid_token"' in response.headers.get("www-authenticate", "")
