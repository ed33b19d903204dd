"""The EMQX 5 HTTP hooks (SPEC §6): the same rules as the embedded broker, always 200 allow/deny."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import Users, bearer

SECRET = "hook-secret-" + "x" * 24


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"mqtt_hook_secret": SECRET}


def hook_headers(secret: str = SECRET) -> dict[str, str]:
    return {"X-Hook-Secret": secret}


async def provisioned_device(client: httpx.AsyncClient, admin_tokens: dict[str, Any]) -> dict[str, Any]:
    made = await client.post("/v1/admin/devices", json={"model": "cam"}, headers=bearer(admin_tokens))
    assert made.status_code == 201, made.text
    device: dict[str, Any] = made.json()["devices"][0]
    token = await client.post("/v1/devices/token", json={"uid": device["uid"], "secret": device["secret"]})
    return {**device, "token": token.json()["access_token"]}


async def test_device_connect_is_allowed_with_expiry_and_acl(client: httpx.AsyncClient, users: Users, ctx: Any) -> None:
    _, admin = await users.admin(ctx)
    device = await provisioned_device(client, admin)
    body = {"clientid": device["uid"], "username": device["uid"], "password": device["token"], "peerhost": "10.0.0.1"}
    answer = (await client.post("/v1/mqtt/auth", json=body, headers=hook_headers())).json()
    assert answer["result"] == "allow"
    assert answer["expire_at"] == jwt.decode(device["token"], options={"verify_signature": False})["exp"]
    allowed = {(rule["action"], rule["topic"]) for rule in answer["acl"] if rule["permission"] == "allow"}
    assert ("subscribe", f"devices/{device['uid']}/commands") in allowed
    assert ("publish", f"devices/{device['uid']}/replies") in allowed
    assert answer["acl"][-1] == {"permission": "deny", "action": "all", "topic": "#"}


async def test_form_bodies_are_accepted(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    me = (await client.get("/v1/users/me", headers=bearer(tokens))).json()
    form = {"clientid": me["id"], "username": me["id"], "password": tokens["access_token"]}
    answer = (await client.post("/v1/mqtt/auth", data=form, headers=hook_headers())).json()
    assert answer["result"] == "allow"


@pytest.mark.parametrize(
    "change",
    [
        {"password": "garbage"},
        {"clientid": "someone-else"},
        {"username": ""},
    ],
)
async def test_bad_connects_are_denied(client: httpx.AsyncClient, users: Users, change: dict[str, str]) -> None:
    _, tokens = await users.new()
    me = (await client.get("/v1/users/me", headers=bearer(tokens))).json()
    body = {"clientid": me["id"], "username": me["id"], "password": tokens["access_token"], **change}
    answer = await client.post("/v1/mqtt/auth", json=body, headers=hook_headers())
    assert answer.status_code == 200
    assert answer.json() == {"result": "deny"}


async def test_wrong_or_missing_hook_secret_is_denied(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    me = (await client.get("/v1/users/me", headers=bearer(tokens))).json()
    body = {"clientid": me["id"], "username": me["id"], "password": tokens["access_token"]}
    for headers in (hook_headers("wrong-secret"), {}):
        answer = await client.post("/v1/mqtt/auth", json=body, headers=headers)
        assert (answer.status_code, answer.json()) == (200, {"result": "deny"})


async def test_acl_hook_follows_roles(client: httpx.AsyncClient, users: Users, ctx: Any) -> None:
    _, admin = await users.admin(ctx)
    device = await provisioned_device(client, admin)
    _, owner_tokens = await users.new()
    viewer, viewer_tokens = await users.new()
    bound = await client.post(
        "/v1/devices/bind",
        json={"uid": device["uid"], "claim_code": device["claim_code"]},
        headers=bearer(owner_tokens),
    )
    assert bound.status_code == 201
    shared = await client.post(
        f"/v1/devices/{device['uid']}/shares",
        json={"username": viewer["username"], "role": "viewer"},
        headers=bearer(owner_tokens),
    )
    assert shared.status_code == 201
    viewer_id = (await client.get("/v1/users/me", headers=bearer(viewer_tokens))).json()["id"]
    uid = device["uid"]
    cases = [
        (viewer_id, "subscribe", f"devices/{uid}/state", "allow"),
        (viewer_id, "subscribe", f"devices/{uid}/#", "allow"),
        (viewer_id, "publish", f"devices/{uid}/commands", "deny"),
        (viewer_id, "subscribe", "devices/#", "deny"),
        (viewer_id, "subscribe", "$SYS/#", "deny"),
        (uid, "publish", f"devices/{uid}/state", "allow"),
        (uid, "subscribe", f"devices/{uid}/state", "deny"),
    ]
    for who, action, topic, expected in cases:
        body = {"clientid": who, "username": who, "topic": topic, "action": action}
        answer = (await client.post("/v1/mqtt/acl", json=body, headers=hook_headers())).json()
        assert answer == {"result": expected}, (who, action, topic)
