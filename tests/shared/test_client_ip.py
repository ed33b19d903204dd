"""The client's IP behind a reverse proxy (HANDSHAKE_TRUSTED_PROXIES): X-Forwarded-For is believed only
from a proxy the operator named, and then only up to the nearest address that is not one of them. A
forged header from anywhere else changes nothing: not the IP in events, not the login lockout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shared.context import Context
from tests.account_manager.test_backend_failures import running
from tests.conftest import Backend, Users, bearer, make_settings
from tests.device_connector.helpers import eventually

PROXY = ("10.1.2.3", 50000)  # inside the trusted 10.0.0.0/8
STRANGER = ("192.0.2.50", 50000)
HOOK_SECRET = "s" * 32


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"trusted_proxies": "10.0.0.0/8, fd00::/8", "mqtt_hook_secret": HOOK_SECRET}


def peer(app: FastAPI, address: tuple[str, int]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app.state.lifespan_app, client=address)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def failed_login_ip(
    app: FastAPI, users: Users, admin: dict[str, Any], address: tuple[str, int], headers: dict[str, str]
) -> str:
    """Fail a login from `address` with `headers`; the IP the platform recorded for it."""
    user, _ = await users.new()
    async with peer(app, address) as http:
        body = {"username": user["username"], "password": "wrong password entirely"}
        assert (await http.post("/v1/auth/login", json=body, headers=headers)).status_code == 401
    response = await users.client.get("/v1/admin/events", params={"type": "login_failed"}, headers=bearer(admin))
    (event,) = [e for e in response.json() if e["detail"].get("username") == user["username"]]
    ip: str = event["ip"]
    return ip


async def test_a_trusted_proxy_names_the_client(app: FastAPI, ctx: Context, users: Users) -> None:
    _, admin = await users.admin(ctx)
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    assert await failed_login_ip(app, users, admin, PROXY, forwarded) == "203.0.113.9"
    # A chain: the nearest address that is not a trusted proxy; what came before it is the client's word.
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.9.9.9"}
    assert await failed_login_ip(app, users, admin, PROXY, chain) == "203.0.113.9"


async def test_a_forged_header_from_anywhere_else_changes_nothing(app: FastAPI, ctx: Context, users: Users) -> None:
    _, admin = await users.admin(ctx)
    forged = {"X-Forwarded-For": "203.0.113.77"}
    assert await failed_login_ip(app, users, admin, STRANGER, forged) == STRANGER[0]


async def test_a_forged_header_does_not_dodge_the_lockout(app: FastAPI, users: Users) -> None:
    """Every failure from one untrusted address counts against it, whatever address it claims."""
    user, _ = await users.new()
    statuses = []
    async with peer(app, STRANGER) as http:
        for n in range(12):
            body = {"username": user["username"], "password": f"wrong password number {n}"}
            headers = {"X-Forwarded-For": f"198.51.100.{n}"}
            statuses.append((await http.post("/v1/auth/login", json=body, headers=headers)).status_code)
    assert 429 in statuses, statuses


async def test_no_proxy_is_trusted_by_default(backend: Backend, tmp_path: Path) -> None:
    settings = make_settings(backend, tmp_path)
    assert settings.trusted_proxies == []
    async with running(settings, ip="127.0.0.1") as (application, http):
        users = Users(http)
        _, admin = await users.admin(application.state.ctx)
        user, _ = await users.new()
        body = {"username": user["username"], "password": "wrong password entirely"}
        headers = {"X-Forwarded-For": "203.0.113.9"}
        assert (await http.post("/v1/auth/login", json=body, headers=headers)).status_code == 401
        response = await http.get("/v1/admin/events", params={"type": "login_failed"}, headers=bearer(admin))
        found = [e["ip"] for e in response.json() if e["detail"].get("username") == user["username"]]
        assert found == ["127.0.0.1"]


async def test_a_broker_reporting_a_proxy_as_its_client_reports_no_address(
    app: FastAPI, ctx: Context, users: Users
) -> None:
    """A broker behind one of the trusted proxies sees the proxy, not the device: an address that is
    one of them is not recorded as the client's (here EMQX's `peerhost` on a refused CONNECT)."""
    _, admin = await users.admin(ctx)
    for n, (peerhost, recorded) in enumerate((("10.7.7.7", None), ("198.51.100.4", "198.51.100.4"))):
        body = {"clientid": "ABCDEFGHIJKLMNOPQRST", "username": "ABCDEFGHIJKLMNOPQRST", "password": "bad"}
        answer = await users.client.post(
            "/v1/mqtt/auth", json={**body, "peerhost": peerhost}, headers={"X-Hook-Secret": HOOK_SECRET}
        )
        assert answer.json()["result"] == "deny"

        async def written(count: int = n + 1) -> list[dict[str, Any]]:  # (through the connector's journal)
            found = await users.client.get(
                "/v1/admin/events", params={"type": "mqtt_auth_failed"}, headers=bearer(admin)
            )
            events: list[dict[str, Any]] = found.json()
            return events if len(events) >= count else []

        newest = (await eventually(written))[0]
        assert newest["ip"] == recorded, peerhost


def test_client_address_leaves_out_the_trusted_proxies() -> None:
    from shared.settings import Settings

    # A comma list as the environment gives it (a string): validated as raw input.
    behind = Settings.model_validate({"trusted_proxies": "10.0.0.0/8,fd00::/8"})
    assert behind.client_address("10.1.2.3") is None and behind.client_address("fd00::1") is None
    assert behind.client_address("198.51.100.4") == "198.51.100.4"
    assert behind.client_address("not an address") is None and behind.client_address("") is None
    assert Settings().client_address("10.1.2.3") == "10.1.2.3"


def test_a_bad_proxy_setting_is_refused() -> None:
    from pydantic import ValidationError

    from shared.settings import Settings

    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings.model_validate({"trusted_proxies": "10.0.0.1/8"})  # host bits set: a typo, not a network
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings.model_validate({"trusted_proxies": "proxy.example"})
