"""The HTTPS command relay, device state and presence (SPEC §6), end to end: the HTTP API on one side,
the SDK's DeviceClient (device_connector.client) on the other, through the embedded broker. The SDK
is synchronous and threaded: it runs in worker threads (asyncio.to_thread) while the app keeps the
test's event loop, and its HTTP calls reach the in-process app through tests' LoopTransport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest

from device_connector.client import DeviceClient
from shared.context import Context
from shared.settings import Settings
from tests.conftest import Users
from tests.device_connector.helpers import (  # noqa: F401  (mqtt_fixture is the `mqtt` fixture)
    Clients,
    World,
    events,
    eventually,
    make_world,
    mqtt_fixture,
    running_connector,
    sync_http,
)
from tests.device_manager import Device, Person, assert_error


class Devices:
    """SDK device clients for a test, each stopped at its end."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.running: list[DeviceClient] = []

    def new(self, device: Device) -> DeviceClient:
        sdk = DeviceClient(
            "http://testserver", device.uid, device.secret, mqtt_host="127.0.0.1", mqtt_port=self.settings.mqtt_port
        )
        sdk.http.close()
        sdk.http = sync_http(self.client)
        return sdk

    async def start(self, sdk: DeviceClient) -> DeviceClient:
        await asyncio.to_thread(sdk.start, 5)
        self.running.append(sdk)
        return sdk

    async def stop(self, sdk: DeviceClient) -> None:
        if sdk in self.running:
            self.running.remove(sdk)
            await asyncio.to_thread(sdk.stop)


@pytest.fixture
async def devices(client: httpx.AsyncClient, settings: Settings) -> AsyncIterator[Devices]:
    made = Devices(client, settings)
    try:
        yield made
    finally:
        for sdk in list(made.running):
            await made.stop(sdk)


def echo_device(devices: Devices, device: Device) -> DeviceClient:
    sdk = devices.new(device)

    @sdk.command("echo")
    def echo(params: dict[str, Any]) -> dict[str, Any]:
        return {"echoed": params}

    @sdk.command("fail")
    def fail(params: dict[str, Any]) -> None:
        raise ValueError("no such lamp")

    return sdk


async def command(
    client: httpx.AsyncClient,
    who: Person,
    uid: str,
    action: str,
    params: Any = None,
    timeout: int | None = None,  # noqa: ASYNC109 - SPEC's command timeout, sent in the body
) -> httpx.Response:
    body: dict[str, Any] = {"action": action}
    if params is not None:
        body["params"] = params
    if timeout is not None:
        body["timeout"] = timeout
    return await client.post(f"/v1/devices/{uid}/commands", json=body, headers=who.headers)


async def test_a_command_reaches_the_device_and_its_reply_comes_back(
    client: httpx.AsyncClient, users: Users, ctx: Context, devices: Devices
) -> None:
    world = await make_world(client, users, ctx)
    await devices.start(echo_device(devices, world.device))

    for who in (world.owner, world.controller):
        response = await command(client, who, world.uid, "echo", {"level": 3, "who": who.username})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"id", "status", "result"}, body
        assert body["status"] == "ok"
        assert body["result"] == {"echoed": {"level": 3, "who": who.username}}
        assert isinstance(body["id"], str) and body["id"]
    failed = await command(client, world.owner, world.uid, "fail")
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == "error"
    # Input is upper-cased (SPEC §2): the UID in lower case names the same device.
    assert (await command(client, world.owner, world.uid.lower(), "echo", {})).status_code == 200

    assert_error(await command(client, world.viewer, world.uid, "echo", {}), 403, "forbidden")
    assert_error(await command(client, world.stranger, world.uid, "echo", {}), 404, "not_found")

    async def recorded(kind: str) -> list[dict[str, Any]]:
        found = await events(client, world.admin, type=kind, device_uid=world.uid)
        return found if len(found) >= 4 else []

    # Four commands went through (two echoes, a failure, the lower-case UID); the refused ones did not.
    assert len(await eventually(lambda: recorded("command_sent"))) == 4
    assert len(await eventually(lambda: recorded("command_replied"))) == 4


async def test_a_command_is_refused_as_every_route_refuses(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    """The route is served without FastAPI's request handler (shared.routing.lean): what it refuses, it
    refuses with the same answers, in the same order (the token before the device, the device before
    the body)."""
    world = await make_world(client, users, ctx)
    path = f"/v1/devices/{world.uid}/commands"
    assert_error(await client.post(path, json={"action": "echo"}), 401, "invalid_token")
    assert_error(
        await client.post(path, json={"action": "echo"}, headers={"Authorization": "Bearer x"}), 401, "invalid_token"
    )
    assert_error(await client.post(path, content=b"{", headers=world.stranger.headers), 404, "not_found")
    assert_error(await client.post(path, content=b"{", headers=world.owner.headers), 400, "invalid_request")
    assert_error(await client.post(path, json={"params": {}}, headers=world.owner.headers), 422, "validation_error")
    assert_error(await command(client, world.owner, world.uid, "echo", {}), 409, "device_offline")


async def test_offline_device_and_timeout(client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients) -> None:
    world = await make_world(client, users, ctx)
    uid = world.uid
    assert_error(await command(client, world.owner, uid, "echo", {}), 409, "device_offline")

    # A device that hears commands and never answers.
    silent = await mqtt.connect(uid, uid, world.device_token)
    assert await silent.subscribe(f"devices/{uid}/commands") == [1]
    response = await command(client, world.controller, uid, "reboot", {"delay": 0}, timeout=1)
    assert_error(response, 504, "device_timeout")
    (received,) = silent.payloads(f"devices/{uid}/commands")
    body = json.loads(received)
    assert set(body) == {"id", "action", "params"}
    assert body["action"] == "reboot" and body["params"] == {"delay": 0}
    timeouts = await eventually(lambda: events(client, world.admin, type="command_timeout", device_uid=uid))
    assert len(timeouts) == 1

    # A late reply is dropped, never handed to the next caller, who gets the reply with its own id.
    commands = f"devices/{uid}/commands"
    pending = asyncio.ensure_future(command(client, world.owner, uid, "echo", {"n": 2}, timeout=5))
    assert await eventually(lambda: len(silent.payloads(commands)) == 2), "the second command never arrived"
    second = json.loads(silent.payloads(commands)[1])
    assert second["id"] != body["id"]
    await silent.publish(f"devices/{uid}/replies", json.dumps({"id": body["id"], "status": "ok", "result": "stale"}))
    await silent.publish(f"devices/{uid}/replies", json.dumps({"id": second["id"], "status": "ok", "result": "fresh"}))
    response = await pending
    assert response.status_code == 200, response.text
    assert response.json() == {"id": second["id"], "status": "ok", "result": "fresh"}

    await silent.close()
    assert await eventually(lambda: not running_connector(ctx).broker.is_online(uid))
    assert_error(await command(client, world.owner, uid, "echo", {}), 409, "device_offline")


async def test_desired_state_reaches_a_device_that_connects_later(
    client: httpx.AsyncClient, users: Users, ctx: Context, devices: Devices
) -> None:
    world = await make_world(client, users, ctx)
    uid = world.uid
    desired = {"on": True, "brightness": 40}
    response = await client.put(f"/v1/devices/{uid}/state/desired", json=desired, headers=world.controller.headers)
    assert response.status_code == 200, response.text
    viewer_put = await client.put(f"/v1/devices/{uid}/state/desired", json={"on": False}, headers=world.viewer.headers)
    assert_error(viewer_put, 403, "forbidden")
    state = await client.get(f"/v1/devices/{uid}/state", headers=world.viewer.headers)
    assert state.status_code == 200, state.text
    assert state.json()["desired"] == desired and state.json()["desired_at"]

    seen: list[dict[str, Any]] = []
    sdk = devices.new(world.device)
    sdk.on_desired(seen.append)
    await devices.start(sdk)
    assert await eventually(lambda: sdk.desired == desired), sdk.desired
    assert seen == [desired]


async def test_retained_reported_state_reaches_a_late_subscriber(
    client: httpx.AsyncClient, users: Users, ctx: Context, devices: Devices, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid = world.uid
    sdk = await devices.start(devices.new(world.device))
    sdk.report_state({"temperature": 21.5})

    async def reported() -> Any:
        response = await client.get(f"/v1/devices/{uid}/state", headers=world.owner.headers)
        assert response.status_code == 200, response.text
        return response.json()["reported"]

    assert await eventually(reported) == {"temperature": 21.5}

    viewer = world.viewer
    late = await mqtt.connect(f"{viewer.id}-late", viewer.id, viewer.tokens["access_token"])
    assert await late.subscribe(f"devices/{uid}/state") == [1]
    assert await late.wait_for(f"devices/{uid}/state")
    (message,) = late.messages(f"devices/{uid}/state")
    assert json.loads(message.payload) == {"temperature": 21.5}
    assert message.retain
    # Only state (and desired state) is retained: a reply published with the retain flag is delivered
    # live and never kept, so that it cannot replay to anyone who subscribes later (issue 17).
    reply = b'{"id":"r-1","status":"ok","result":"for controllers"}'
    info = sdk.mqtt.publish(f"devices/{uid}/replies", reply, qos=1, retain=True)
    await asyncio.to_thread(info.wait_for_publish, 5)
    controller = world.controller
    wide = {
        "viewer": await mqtt.connect(f"{viewer.id}-wide", viewer.id, viewer.tokens["access_token"]),
        "controller": await mqtt.connect(f"{controller.id}-wide", controller.id, controller.tokens["access_token"]),
    }
    for conn in wide.values():
        assert await conn.subscribe(f"devices/{uid}/#") == [1]
        assert await conn.wait_for(f"devices/{uid}/state")
        # The SUBACK of a second SUBSCRIBE comes after every retained message of the first.
        assert await conn.subscribe(f"devices/{uid}/events") == [1]
    assert wide["controller"].payloads(f"devices/{uid}/replies") == []
    assert wide["viewer"].payloads(f"devices/{uid}/replies") == []
    assert all(conn.payloads(f"devices/{uid}/state") for conn in wide.values())

    # A stranger subscribing gets neither the subscription nor the retained message.
    stranger = await mqtt.connect(world.stranger.id, world.stranger.id, world.stranger.tokens["access_token"])
    assert await stranger.subscribe(f"devices/{uid}/state") == [0x80]


async def device_view(client: httpx.AsyncClient, world: World) -> dict[str, Any]:
    response = await client.get(f"/v1/devices/{world.uid}", headers=world.owner.headers)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def test_presence(client: httpx.AsyncClient, users: Users, ctx: Context, devices: Devices) -> None:
    world = await make_world(client, users, ctx)
    assert (await device_view(client, world))["online"] is False
    sdk = await devices.start(devices.new(world.device))

    def check(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[], Any]:
        async def probe() -> dict[str, Any] | None:
            view = await device_view(client, world)
            return view if predicate(view) else None

        return probe

    online = await eventually(check(lambda v: v["online"] is True))
    assert online, await device_view(client, world)
    assert online["ip"] == "127.0.0.1"
    assert online["connected_at"]
    assert online["region"] is None  # a loopback address has no region

    await devices.stop(sdk)
    offline = await eventually(check(lambda v: v["online"] is False))
    assert offline, await device_view(client, world)
    assert offline["last_seen"]

    connected = await events(client, world.admin, type="device_connected", device_uid=world.uid)
    assert len(connected) == 1 and connected[0]["ip"] == "127.0.0.1"

    async def disconnected() -> list[dict[str, Any]]:
        return await events(client, world.admin, type="device_disconnected", device_uid=world.uid)

    (gone,) = await eventually(disconnected)
    assert gone["detail"]["reason"] == "client_closed"
    assert gone["actor_type"] == "device" and gone["actor_id"] == world.uid


async def test_a_command_over_mqtt(
    client: httpx.AsyncClient, users: Users, ctx: Context, devices: Devices, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid = world.uid
    await devices.start(echo_device(devices, world.device))
    controller = world.controller
    app = await mqtt.connect(f"{controller.id}-app", controller.id, controller.tokens["access_token"])
    assert await app.subscribe(f"devices/{uid}/replies") == [1]

    await app.publish(f"devices/{uid}/commands", json.dumps({"id": "c-1", "action": "echo", "params": {"x": 1}}))
    assert await app.wait_for(f"devices/{uid}/replies")
    (reply,) = app.payloads(f"devices/{uid}/replies")
    assert json.loads(reply) == {"id": "c-1", "status": "ok", "result": {"echoed": {"x": 1}}}


async def test_the_sdk_gets_a_fresh_token_when_its_token_is_refused(
    client: httpx.AsyncClient, users: Users, ctx: Context, devices: Devices
) -> None:
    """Refused at CONNECT, the SDK gets a fresh token before it tries again: after the key that signed
    its token was revoked it used to retry the refused token until its renewal time, ~48 min later."""
    world = await make_world(client, users, ctx)
    uid = world.uid
    broker = running_connector(ctx).broker
    sdk = await devices.start(echo_device(devices, world.device))
    old_kid = jwt.get_unverified_header(sdk.mqtt.password or "")["kid"]
    ctx.key_dir.add(ctx.settings.jwt_alg)  # what `handshake keys rotate` then `keys revoke` do
    assert ctx.key_dir.remove(old_kid)
    assert await eventually(lambda: not broker.is_online(uid)), "a connection of a revoked key stayed up"
    # Every token of the old key is refused now, the people's too: they log in again.
    admin, owner = [Person(p.id, p.username, await users.login(p.username)) for p in (world.admin, world.owner)]

    async def refused() -> list[dict[str, Any]]:
        return await events(client, admin, type="mqtt_auth_failed", device_uid=uid)

    assert await eventually(refused, timeout=10), "the SDK never tried again"
    assert await eventually(lambda: broker.is_online(uid), timeout=20), "the SDK stayed offline with its old token"
    response = await command(client, owner, uid, "echo", {"back": True})
    assert response.status_code == 200, response.text
