"""Tests of the device manager (SPEC §5), and the helpers they share: provisioning as an admin, binding
as a user, reading the activity log. Everything goes through the HTTP API, as an app or a device would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from shared.context import Context
from tests.conftest import Users, bearer

IP = "203.0.113.7"  # the test client's address (tests/conftest.py)


@dataclass(frozen=True)
class Device:
    uid: str
    secret: str
    claim_code: str


@dataclass(frozen=True)
class Person:
    id: str
    username: str
    tokens: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.tokens)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body  # SPEC §2: every error body, exactly these keys
    assert body["error"] == code, body


async def person(users: Users) -> Person:
    user, tokens = await users.new()
    return Person(user["id"], user["username"], tokens)


async def staff(users: Users, ctx: Context, role: str = "admin") -> Person:
    """A user of another type (admin, support, manufacturer), created as `handshake users create` does."""
    user, tokens = await users.admin(ctx, role)
    me = await users.client.get("/v1/users/me", headers=bearer(tokens))
    assert me.status_code == 200, me.text
    return Person(me.json()["id"], user["username"], tokens)


async def provision(client: httpx.AsyncClient, provisioner: Person, count: int = 1, **body: Any) -> list[Device]:
    response = await client.post(
        "/v1/admin/devices", json={"model": "lamp-1", "count": count, **body}, headers=provisioner.headers
    )
    assert response.status_code == 201, response.text
    return [Device(d["uid"], d["secret"], d["claim_code"]) for d in response.json()["devices"]]


async def bind(client: httpx.AsyncClient, user: Person, uid: str, claim_code: str) -> httpx.Response:
    return await client.post("/v1/devices/bind", json={"uid": uid, "claim_code": claim_code}, headers=user.headers)


async def bound_device(client: httpx.AsyncClient, provisioner: Person, owner: Person) -> Device:
    (device,) = await provision(client, provisioner)
    response = await bind(client, owner, device.uid, device.claim_code)
    assert response.status_code == 201, response.text
    return device


async def share(client: httpx.AsyncClient, owner: Person, uid: str, sharee: Person, role: str) -> httpx.Response:
    return await client.post(
        f"/v1/devices/{uid}/shares", json={"username": sharee.username, "role": role}, headers=owner.headers
    )


async def device_token(client: httpx.AsyncClient, uid: str, secret: str) -> httpx.Response:
    return await client.post("/v1/devices/token", json={"uid": uid, "secret": secret})


async def get_device(client: httpx.AsyncClient, user: Person, uid: str) -> httpx.Response:
    return await client.get(f"/v1/devices/{uid}", headers=user.headers)


async def introspect(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await client.post("/v1/auth/introspect", data={"token": token})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def events(client: httpx.AsyncClient, reader: Person, **params: Any) -> list[dict[str, Any]]:
    """Activity events, newest first (SPEC §4, §7)."""
    response = await client.get("/v1/admin/events", params={"limit": 500, **params}, headers=reader.headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def client_from(app: FastAPI, ip: str) -> httpx.AsyncClient:
    """A client of the running app that connects from another address."""
    transport = httpx.ASGITransport(app=app.state.lifespan_app, client=(ip, 40001))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")
