"""The role matrix of SPEC §5, straight from its table: for every device endpoint and every role on the
device, no role is 404 (the device is not even visible, SPEC §2), too small a role is 403, the right
role is 2xx. Each row runs on a fresh device: owner, a controller, a viewer, a stranger, and one more
sharee ("other") that share and transfer rows name as their target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from shared.context import Context
from tests.conftest import Users
from tests.device_manager import Person, assert_error, bound_device, person, provision, share, staff

ROLES = ("owner", "controller", "viewer", "stranger")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {uid}; {other} is the id of the "other" sharee
    body: dict[str, Any] | None
    ok: int
    allowed: frozenset[str]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _endpoint(method: str, path: str, ok: int, allowed: set[str], body: dict[str, Any] | None = None) -> Endpoint:
    return Endpoint(method, path, body, ok, frozenset(allowed))


# "owner (view, control, share, unbind, rename, transfer), controller (view, control), viewer (view)"
MATRIX = [
    _endpoint("GET", "/v1/devices/{uid}", 200, {"owner", "controller", "viewer"}),
    _endpoint("PATCH", "/v1/devices/{uid}", 200, {"owner"}, {"name": "Porch"}),
    _endpoint("DELETE", "/v1/devices/{uid}/binding", 204, {"owner"}),
    _endpoint("POST", "/v1/devices/{uid}/shares", 201, {"owner"}, {"username": "{other_name}", "role": "viewer"}),
    _endpoint("GET", "/v1/devices/{uid}/shares", 200, {"owner"}),
    # Removing somebody else's share is the owner's; a sharee removing its own share is below.
    _endpoint("DELETE", "/v1/devices/{uid}/shares/{other}", 204, {"owner"}),
    _endpoint("POST", "/v1/devices/{uid}/transfer", 200, {"owner"}, {"username": "{other_name}"}),
]

CASES = [pytest.param(endpoint, role, id=f"{endpoint}-{role}") for endpoint in MATRIX for role in ROLES]


@dataclass(frozen=True)
class World:
    uid: str
    people: dict[str, Person]
    other: Person


async def world(client: httpx.AsyncClient, users: Users, ctx: Context) -> World:
    admin = await staff(users, ctx)
    people = {role: await person(users) for role in ROLES}
    other = await person(users)
    device = await bound_device(client, admin, people["owner"])
    for sharee, role in ((people["controller"], "controller"), (people["viewer"], "viewer"), (other, "viewer")):
        assert (await share(client, people["owner"], device.uid, sharee, role)).status_code == 201
    return World(device.uid, people, other)


def _fill(value: Any, w: World) -> Any:
    if isinstance(value, str):
        return value.format(uid=w.uid, other=w.other.id, other_name=w.other.username)
    if isinstance(value, dict):
        return {key: _fill(item, w) for key, item in value.items()}
    return value


async def call(client: httpx.AsyncClient, endpoint: Endpoint, caller: Person, w: World) -> httpx.Response:
    return await client.request(
        endpoint.method, _fill(endpoint.path, w), json=_fill(endpoint.body, w), headers=caller.headers
    )


@pytest.mark.parametrize(("endpoint", "role"), CASES)
async def test_role_matrix(
    client: httpx.AsyncClient, users: Users, ctx: Context, endpoint: Endpoint, role: str
) -> None:
    w = await world(client, users, ctx)
    response = await call(client, endpoint, w.people[role], w)
    if role in endpoint.allowed:
        assert response.status_code == endpoint.ok, response.text
    elif role == "stranger":
        assert_error(response, 404, "not_found")
    else:
        assert_error(response, 403, "forbidden")


@pytest.mark.parametrize("endpoint", MATRIX, ids=str)
async def test_a_strangers_404_is_the_same_as_for_a_device_that_does_not_exist(
    client: httpx.AsyncClient, users: Users, ctx: Context, endpoint: Endpoint
) -> None:
    w = await world(client, users, ctx)
    stranger = w.people["stranger"]
    existing = await call(client, endpoint, stranger, w)
    missing = await call(client, endpoint, stranger, World("NOSUCHDEVICE00000001", w.people, w.other))
    assert_error(existing, 404, "not_found")
    assert_error(missing, 404, "not_found")
    assert existing.json() == missing.json()


@pytest.mark.parametrize("role", ["controller", "viewer"])
async def test_a_sharee_may_remove_its_own_share(
    client: httpx.AsyncClient, users: Users, ctx: Context, role: str
) -> None:
    w = await world(client, users, ctx)
    sharee = w.people[role]
    response = await client.delete(f"/v1/devices/{w.uid}/shares/{sharee.id}", headers=sharee.headers)
    assert response.status_code == 204, response.text
    assert_error(await client.get(f"/v1/devices/{w.uid}", headers=sharee.headers), 404, "not_found")


@pytest.mark.parametrize("endpoint", MATRIX, ids=str)
async def test_every_device_endpoint_needs_a_user_token(
    client: httpx.AsyncClient, users: Users, ctx: Context, endpoint: Endpoint
) -> None:
    w = await world(client, users, ctx)
    response = await client.request(endpoint.method, _fill(endpoint.path, w), json=_fill(endpoint.body, w))
    assert_error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer")


# --- user types on the device admin endpoints (SPEC §4, §5) -------------------------------------

# admin (everything), support (reads every admin view, changes nothing), manufacturer (provisions
# devices, sees nothing of users), user (end user).
ADMIN_MATRIX = [
    ("POST", "/v1/admin/devices", 201, {"admin", "manufacturer"}),
    ("GET", "/v1/admin/devices", 200, {"admin", "support"}),
    ("POST", "/v1/admin/devices/{uid}/disable", 200, {"admin"}),
    ("POST", "/v1/admin/devices/{uid}/enable", 200, {"admin"}),
]
USER_TYPES = ("admin", "support", "manufacturer", "user")
ADMIN_CASES = [
    pytest.param(method, path, ok, allowed, user_type, id=f"{method} {path}-{user_type}")
    for method, path, ok, allowed in ADMIN_MATRIX
    for user_type in USER_TYPES
]


@pytest.mark.parametrize(("method", "path", "ok", "allowed", "user_type"), ADMIN_CASES)
async def test_user_type_matrix_of_device_admin(
    client: httpx.AsyncClient,
    users: Users,
    ctx: Context,
    method: str,
    path: str,
    ok: int,
    allowed: set[str],
    user_type: str,
) -> None:
    (device,) = await provision(client, await staff(users, ctx))
    caller = await person(users) if user_type == "user" else await staff(users, ctx, user_type)
    body = {"model": "lamp-1", "count": 1} if method == "POST" and path == "/v1/admin/devices" else None
    response = await client.request(method, path.format(uid=device.uid), json=body, headers=caller.headers)
    if user_type in allowed:
        assert response.status_code == ok, response.text
    else:
        assert_error(response, 403, "forbidden")
