"""Failure behaviour (SPEC §11, SECURITY.md "Fail closed, with 503"): with Redis cut or hung, token
checks and refreshes answer 503 service_unavailable with Retry-After, never 200, 401 or 500; health
and the JWKS stay up; the refresh token is not consumed; a revocation made meanwhile holds; service
comes back by itself. Redis losing its data never un-revokes a session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from shared.app import create_app
from shared.settings import Settings
from tests.conftest import Backend, Users, bearer, make_settings
from tests.proxy import TcpProxy

T = TypeVar("T")
BOUND = 10.0  # no single request may take longer than this, whatever Redis does
CUT_DETECTED_WITHIN = 3.0  # a closed connection is noticed at once
HANG_DETECTED_WITHIN = 8.0  # silence is noticed by timeouts and the revocation view going stale
RECOVERED_WITHIN = 10.0


async def bounded(call: Awaitable[T]) -> T:
    return await asyncio.wait_for(call, BOUND)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.json()["error"] == "service_unavailable", response.text
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) > 0, response.headers


def redis_target(backend: Backend) -> tuple[str, int]:
    assert backend.redis_url is not None
    parts = urlsplit(backend.redis_url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


@asynccontextmanager
async def running(settings: Settings, *, ip: str = "203.0.113.7") -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app on `settings`, started like the `app` fixture does, and a client for it."""
    application = create_app(settings, migrate=True)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30) as manager:
        application.state.lifespan_app = manager.app
        transport = httpx.ASGITransport(app=manager.app, client=(ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield application, http


def sibling(settings: Settings, backend: Backend, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for another process of the same deployment: same database, key directory and Redis
    prefix (and, unless overridden, the backend's Redis itself, not the proxy)."""
    return make_settings(backend, tmp_path, redis_prefix=settings.redis_prefix, **overrides)


@pytest.fixture
def postgres_only(backend: Backend) -> Backend:
    if backend.name == "sqlite":
        pytest.skip("the embedded backend has no Redis to lose")
    return backend


@pytest.fixture
def cut_settings(postgres_only: Backend, tmp_path: Path, proxy: TcpProxy) -> Settings:
    """Settings whose Redis sits behind the proxy, so a test can cut it."""
    host, port = redis_target(postgres_only)
    redis_url = f"redis://{proxy.forward_to(host, port)}/0"
    # The tests poll introspection hard; its per-IP rate limit is not what they are about.
    return make_settings(postgres_only, tmp_path, redis_url=redis_url, introspect_rate=100_000)


@pytest.fixture
async def cut(cut_settings: Settings, proxy: TcpProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with running(cut_settings) as (_, http):
        try:
            yield http
        finally:
            proxy.up()  # let the app shut down cleanly whatever the test left behind


async def wait_until_unavailable(
    http: httpx.AsyncClient, tokens: dict[str, Any], *, within: float = CUT_DETECTED_WITHIN
) -> None:
    """Poll a protected route until it fails closed. Before the cut is noticed a 200 is fine; after
    the first 503 only 503s; never a 401 (apps drop tokens on 401) or a 500."""
    deadline = time.monotonic() + within
    answers: list[int] = []
    while time.monotonic() < deadline:
        response = await bounded(http.get("/v1/users/me", headers=bearer(tokens)))
        answers.append(response.status_code)
        assert response.status_code in (200, 503), (answers, response.text)
        if response.status_code == 503:
            assert_unavailable(response)
            for _ in range(3):
                assert_unavailable(await bounded(http.get("/v1/users/me", headers=bearer(tokens))))
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"still not failing closed {within}s after Redis went away: {answers}")


async def wait_until_recovered(http: httpx.AsyncClient, tokens: dict[str, Any]) -> None:
    """Poll until a live token is accepted again; meanwhile only 503s."""
    deadline = time.monotonic() + RECOVERED_WITHIN
    answers: list[int] = []
    while time.monotonic() < deadline:
        response = await bounded(http.get("/v1/users/me", headers=bearer(tokens)))
        answers.append(response.status_code)
        if response.status_code == 200:
            return
        assert response.status_code == 503, (answers, response.text)
        await asyncio.sleep(0.1)
    pytest.fail(f"no recovery within {RECOVERED_WITHIN}s: {answers}")


async def assert_stays_revoked(http: httpx.AsyncClient, tokens: dict[str, Any]) -> None:
    """Poll hard through the recovery: a revoked token may get 503 while the process catches up, never
    200; once caught up, 401 (SPEC §11: "A revoked token is never accepted in any state")."""
    deadline = time.monotonic() + RECOVERED_WITHIN
    answers: list[int] = []
    while time.monotonic() < deadline and answers[-20:] != [401] * 20:
        response = await bounded(http.get("/v1/users/me", headers=bearer(tokens)))
        answers.append(response.status_code)
        assert response.status_code in (401, 503), f"a revoked token got {response.status_code}: {answers}"
        introspected = await bounded(http.post("/v1/auth/introspect", data={"token": tokens["access_token"]}))
        assert introspected.status_code == 503 or introspected.json() == {"active": False}, (answers, introspected.text)
        await asyncio.sleep(0.002)
    assert answers[-20:] == [401] * 20, f"no settled answer within {RECOVERED_WITHIN}s: {answers}"


async def test_redis_down_fails_closed_with_503_and_recovers_by_itself(cut: httpx.AsyncClient, proxy: TcpProxy) -> None:
    users = Users(cut)
    _, tokens = await users.new()
    assert (await cut.get("/v1/users/me", headers=bearer(tokens))).status_code == 200

    proxy.down()
    await wait_until_unavailable(cut, tokens)

    assert (await bounded(cut.get("/healthz"))).status_code == 200
    jwks = await bounded(cut.get("/.well-known/jwks.json"))
    assert jwks.status_code == 200 and jwks.json()["keys"], jwks.text
    ready = await bounded(cut.get("/readyz"))
    assert ready.status_code == 503, ready.text
    refresh = await bounded(cut.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    assert_unavailable(refresh)
    # Introspection cannot confirm the token either: 503, not {"active": false} (which would end it).
    assert_unavailable(await bounded(cut.post("/v1/auth/introspect", data={"token": tokens["access_token"]})))

    proxy.up()
    await wait_until_recovered(cut, tokens)
    ready = await bounded(cut.get("/readyz"))
    assert ready.status_code == 200, ready.text

    # The refresh refused during the outage did not consume the token: it still rotates.
    response = await bounded(cut.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    assert response.status_code == 200, response.text
    fresh = response.json()
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert (await cut.get("/v1/users/me", headers=bearer(fresh))).status_code == 200


async def test_hung_redis_answers_503_within_seconds_not_never(cut: httpx.AsyncClient, proxy: TcpProxy) -> None:
    users = Users(cut)
    _, tokens = await users.new()
    assert (await cut.get("/v1/users/me", headers=bearer(tokens))).status_code == 200

    proxy.hang()
    await wait_until_unavailable(cut, tokens, within=HANG_DETECTED_WITHIN)
    assert (await bounded(cut.get("/healthz"))).status_code == 200
    assert (await bounded(cut.get("/.well-known/jwks.json"))).status_code == 200
    assert (await bounded(cut.get("/readyz"))).status_code == 503
    assert_unavailable(await bounded(cut.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})))
    # A login needs Redis too (the throttling counters): an answer, quickly, and never a 500.
    login = await bounded(cut.post("/v1/auth/login", json={"username": "whoever", "password": "whatever"}))
    assert login.status_code in (401, 503), login.text

    proxy.up()
    await wait_until_recovered(cut, tokens)
    response = await bounded(cut.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    assert response.status_code == 200, response.text


async def test_session_revoked_while_redis_is_down_stays_revoked_after_recovery(
    cut: httpx.AsyncClient, cut_settings: Settings, postgres_only: Backend, proxy: TcpProxy, tmp_path: Path
) -> None:
    users = Users(cut)
    _, tokens = await users.new()
    assert (await cut.get("/v1/users/me", headers=bearer(tokens))).status_code == 200

    proxy.down()
    await wait_until_unavailable(cut, tokens)

    # A second process of the deployment (same database, keys and Redis prefix), whose own path to
    # Redis is healthy, ends the session; its announcement cannot reach the cut-off process.
    async with running(sibling(cut_settings, postgres_only, tmp_path)) as (_, other):
        response = await bounded(other.post("/v1/auth/logout", headers=bearer(tokens)))
        assert response.status_code == 204, response.text
        assert (await other.get("/v1/users/me", headers=bearer(tokens))).status_code == 401

    # While it is cut off the first process still fails closed, never 200.
    assert_unavailable(await bounded(cut.get("/v1/users/me", headers=bearer(tokens))))

    proxy.up()
    await assert_stays_revoked(cut, tokens)
    response = await cut.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401 and response.json()["error"] == "invalid_grant", response.text


async def test_revocations_missed_during_an_outage_are_read_before_tokens_are_accepted_again(
    cut_settings: Settings, postgres_only: Backend, proxy: TcpProxy, tmp_path: Path
) -> None:
    """The same story as above, with the database slow to answer just when Redis comes back: the
    process must not trust its revocation view until it has read what it missed."""
    assert postgres_only.database_url is not None
    database = urlsplit(postgres_only.database_url)
    with TcpProxy() as pg:
        via = pg.forward_to(database.hostname or "127.0.0.1", database.port or 5432)
        settings = sibling(
            cut_settings,
            postgres_only,
            tmp_path,
            redis_url=cut_settings.redis_url,
            database_url=database._replace(netloc=f"{database.netloc.rpartition('@')[0]}@{via}").geturl(),
            introspect_rate=cut_settings.introspect_rate,
        )
        async with running(settings) as (_, cut):
            try:
                _, tokens = await Users(cut).new()
                assert (await cut.get("/v1/users/me", headers=bearer(tokens))).status_code == 200
                proxy.down()
                await wait_until_unavailable(cut, tokens)
                async with running(sibling(cut_settings, postgres_only, tmp_path)) as (_, other):
                    assert (await bounded(other.post("/v1/auth/logout", headers=bearer(tokens)))).status_code == 204

                pg.hang()
                proxy.up()
                # Introspection of an access token needs no database: only the revocation view.
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    response = await bounded(cut.post("/v1/auth/introspect", data={"token": tokens["access_token"]}))
                    assert response.status_code == 503 or response.json() == {"active": False}, response.text
                    await asyncio.sleep(0.05)
                pg.up()
                await assert_stays_revoked(cut, tokens)
            finally:
                proxy.up()
                pg.up()


async def test_redis_losing_its_data_does_not_revive_revoked_sessions(
    client: httpx.AsyncClient, users: Users, settings: Settings, backend: Backend, tmp_path: Path
) -> None:
    _, revoked = await users.new()
    _, live = await users.new()
    assert (await client.post("/v1/auth/logout", headers=bearer(revoked))).status_code == 204
    assert (await client.get("/v1/users/me", headers=bearer(revoked))).status_code == 401

    if backend.uses_redis:
        # FLUSHALL, limited to this app's keys (other test runs may share the server).
        server = aioredis.Redis.from_url(backend.redis_url or "")
        try:
            names = [name async for name in server.scan_iter(match=settings.redis_prefix + "*")]
            if names:
                await server.delete(*names)
        finally:
            await server.aclose()

    # Across a few reconciliation passes the revoked session stays revoked and the live one lives.
    for _ in range(15):
        assert (await client.get("/v1/users/me", headers=bearer(revoked))).status_code == 401
        assert (await client.get("/v1/users/me", headers=bearer(live))).status_code == 200
        await asyncio.sleep(0.2)

    # A fresh process has nothing in memory at all (the embedded backend's equivalent of an empty
    # cache): it learns the revocation from the database, the system of record. While it starts it
    # may answer 503; never 200 for the revoked token.
    async with running(sibling(settings, backend, tmp_path, introspect_rate=100_000)) as (_, fresh):
        await assert_stays_revoked(fresh, revoked)
        await wait_until_recovered(fresh, live)
        response = await fresh.post("/v1/auth/refresh", json={"refresh_token": revoked["refresh_token"]})
        assert response.status_code == 401 and response.json()["error"] == "invalid_grant", response.text
