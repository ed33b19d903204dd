"""A PostgreSQL or a Redis that accepts connections and answers nothing (SPEC §11): every kind of request answers
503 within a few seconds, not after the driver's own timeouts add up, and an MQTT CONNECT is refused as
unavailable (3). Once the database answers again, so does the platform: the connections that were
dropped unanswered are replaced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.account_manager.test_backend_failures import running
from tests.conftest import Backend, Users, _reset_postgres, make_settings
from tests.device_connector.helpers import Clients, make_world
from tests.proxy import TcpProxy

# backend_timeout is 1 s: each transaction gets 2 s, a request 3 s of them. Generous on a loaded machine (4.5 s was
# overrun once, by a write, in a full four-worker run), and
# well under what the driver's timeouts added up to before (7.1 s for one read).
ANSWERED_WITHIN = 5.5


@pytest.fixture(params=["PostgreSQL", "Redis"])
def hung_settings(request: pytest.FixtureRequest, backend: Backend, tmp_path: Path, proxy: TcpProxy) -> Any:
    """Settings whose PostgreSQL, or whose Redis, sits behind the proxy (so a test can hang it)."""
    if backend.name == "sqlite":
        pytest.skip("SQLite is a local file and the embedded defaults have no Redis: no peer to hang")
    assert backend.database_url is not None and backend.redis_url is not None
    if request.param == "PostgreSQL":
        parts = urlsplit(backend.database_url)
        via = proxy.forward_to(parts.hostname or "127.0.0.1", parts.port or 5432)
        return make_settings(
            backend, tmp_path, database_url=backend.database_url.replace(parts.netloc.rsplit("@", 1)[-1], via)
        )
    parts = urlsplit(backend.redis_url)
    via = proxy.forward_to(parts.hostname or "127.0.0.1", parts.port or 6379)
    return make_settings(backend, tmp_path, redis_url=f"redis://{via}/0")


async def timed(call: Awaitable[Any]) -> tuple[float, Any]:
    started = time.monotonic()
    result = await asyncio.wait_for(call, 15)
    return time.monotonic() - started, result


async def test_a_hung_backend_costs_every_request_a_few_seconds_and_a_503(hung_settings: Any, proxy: TcpProxy) -> None:
    await _reset_postgres(hung_settings)
    async with running(hung_settings) as (app, http):
        ctx = app.state.ctx
        world = await make_world(http, Users(http), ctx)
        owner = world.owner
        again = await http.post(
            "/v1/auth/login", json={"username": owner.username, "password": "correct horse battery"}
        )
        assert again.status_code == 200, again.text
        refresh_token = again.json()["refresh_token"]
        mqtt = Clients(hung_settings)
        try:
            proxy.hang()
            kinds: dict[str, Callable[[], Awaitable[Any]]] = {
                "read": lambda: http.get("/v1/auth/sessions", headers=owner.headers),
                # The caller's own row, which its login left in this process's cache: answered from
                # there while the revocation view is confirmed, as any cached row (issue 11).
                "cached read": lambda: http.get("/v1/users/me", headers=owner.headers),
                "write transaction": lambda: http.patch(
                    "/v1/users/me", json={"email": "new@example.com"}, headers=owner.headers
                ),
                "login": lambda: http.post(
                    "/v1/auth/login", json={"username": owner.username, "password": "correct horse battery"}
                ),
                "refresh": lambda: http.post("/v1/auth/refresh", json={"refresh_token": refresh_token}),
                "command": lambda: http.post(
                    f"/v1/devices/{world.uid}/commands",
                    json={"action": "switch", "params": {}, "timeout": 5},
                    headers=owner.headers,
                ),
                "MQTT CONNECT": lambda: mqtt.attempt(owner.id, owner.id, owner.tokens["access_token"]),
            }
            # All at once, right after the hang: before the revocation view goes stale (which would
            # answer 503 without touching the database), each but the cached read is on its own
            # database call.
            names = list(kinds)
            results = await asyncio.gather(*(timed(kinds[name]()) for name in names))
            # A hung database is on every one's path: each is refused as unavailable. Redis is on some
            # only (rate limits, lockout, refresh): those answer 503, the others as usual, until the
            # revocation view goes stale.
            on_path = f":{proxy.port}/" in hung_settings.database_url  # the database is the one hung
            for name, (elapsed, answer) in zip(names, results, strict=True):
                if name == "MQTT CONNECT":
                    assert answer == 3 or (not on_path and answer == 0), f"{name}: CONNACK {answer}"
                elif name == "cached read":
                    assert answer.status_code == 200, f"{name}: {answer.status_code} {answer.text}"
                elif on_path or answer.status_code == 503:
                    assert answer.status_code == 503, f"{name}: {answer.status_code} {answer.text}"
                    assert answer.json()["error"] == "service_unavailable"
                else:
                    assert answer.status_code in (200, 409), f"{name}: {answer.status_code} {answer.text}"
                assert elapsed < ANSWERED_WITHIN, f"{name} took {elapsed:.1f} s against a hung backend"
        finally:
            proxy.up()
            await mqtt.close_all()

        async def recovered() -> bool:
            return (await http.get("/v1/users/me", headers=owner.headers)).status_code == 200

        deadline = time.monotonic() + 15
        while not await recovered():
            assert time.monotonic() < deadline, "no recovery after the database answered again"
            await asyncio.sleep(0.2)
