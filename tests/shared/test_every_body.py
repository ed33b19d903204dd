"""Every route of every service that reads a body, and every path and query: a NUL character or a
document nested deeper than the bound is a 400 with {"error", "detail"} and changes nothing, on both
backends (issue 17: NUL answered 500 on twelve routes on PostgreSQL, deep documents were stored and
then broke every read and every restart)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from shared.context import Context
from shared.jsonlimits import MAX_DEPTH
from tests.conftest import Users
from tests.device_manager import assert_error, bound_device, person, staff

HOOKS = ("/v1/mqtt/", "/v1/rabbitmq/")  # broker hooks answer 200 "deny" to anything they cannot read


def body_routes(app: FastAPI) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path.startswith(HOOKS):
            continue
        reads_body = route.body_field is not None or "requestBody" in (route.openapi_extra or {})
        for method in sorted(route.methods or ()):
            if reads_body or method in ("PUT", "PATCH"):
                found.append((method, route.path))
    return found


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"k": value}
    return value


BODIES = {
    "NUL in a value": {"username": "a\x00b", "name": "x\x00", "password": "p\x00", "action": "go\x00"},
    "NUL in a key": {"a\x00": 1},
    "nested too deep": {"params": deep(MAX_DEPTH + 1), "name": "x"},
}


@pytest.mark.parametrize("kind", list(BODIES))
async def test_every_body_route_refuses_nul_and_deep_documents(
    app: FastAPI, client: httpx.AsyncClient, users: Users, ctx: Context, kind: str
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await bound_device(client, admin, owner)
    routes = body_routes(app)
    assert len(routes) >= 15, routes  # every service's routes are there
    content = json.dumps(BODIES[kind]).encode()
    refused = set()
    for method, path in routes:
        url = path.replace("{uid}", device.uid).replace("{user_id}", owner.id).replace("{kid}", "k")
        for caller in (admin, owner):
            response = await client.request(
                method, url, content=content, headers={**caller.headers, "Content-Type": "application/json"}
            )
            assert response.status_code < 500, (method, path, response.status_code, response.text)
            if response.status_code not in (401, 403, 404, 405):
                assert_error(response, 400, "invalid_request")
                refused.add((method, path))
    # Each route got as far as reading its body for one of the two callers.
    assert set(routes) - refused == set(), sorted(set(routes) - refused)
    # Nothing changed: the device is the owner's still, unrenamed, with no desired state.
    got = await client.get(f"/v1/devices/{device.uid}", headers=owner.headers)
    assert got.status_code == 200 and got.json()["role"] == "owner", got.text
    state = await client.get(f"/v1/devices/{device.uid}/state", headers=owner.headers)
    assert state.json()["desired"] is None, state.text


async def test_a_nul_in_a_path_or_a_query_is_a_400(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    for url in (
        "/v1/devices/AB%00CD",
        "/v1/admin/users?query=a%00b",
        "/v1/admin/events?user_id=%00",
        "/v1/admin/users/%00",
    ):
        assert_error(await client.get(url, headers=admin.headers), 400, "invalid_request")
