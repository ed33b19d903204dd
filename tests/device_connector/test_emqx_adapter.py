"""The EMQX adapter (SPEC §6 "On a clustered broker"). EMQX cannot be installed on this machine, so the
broker the connector publishes and subscribes through is the real Mosquitto of this machine, and EMQX's
own part is played to its documented shapes (EMQX 5.8: the HTTP authn request, the rule engine's
`client.connected` / `client.disconnected` bodies, `DELETE /api/v5/clients/{clientid}` answering 204 or
404 `CLIENTID_NOT_FOUND`), by the test: it calls our hooks as EMQX would, posts its events, and serves
its management API from a small recording server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from asgi_lifespan import LifespanManager
from paho.mqtt.enums import CallbackAPIVersion

from shared.app import create_app
from shared.testing import forge
from tests.conftest import Backend, Users, _reset_postgres, make_settings
from tests.device_connector.helpers import World, events, eventually, make_world

MOSQUITTO = ("127.0.0.1", 1883)
SECRET = "emqx-hook-secret-" + "z" * 24
API_KEY, API_SECRET = "handshake", "emqx-api-secret"


def mosquitto_up() -> bool:
    try:
        with socket.create_connection(MOSQUITTO, timeout=1):
            return True
    except OSError:
        return False


class EmqxApi(ThreadingHTTPServer):
    """EMQX's management API as far as the connector uses it: kicks, with HTTP Basic API keys."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.online: set[str] = set()
        self.kicks: list[tuple[str, float]] = []
        self.up = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{API_KEY}:{API_SECRET}@127.0.0.1:{self.server_address[1]}"


class _ApiHandler(BaseHTTPRequestHandler):
    server: EmqxApi

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_DELETE(self) -> None:
        expected = "Basic " + base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
        if not self.server.up:
            self.send_response(503)
            self.end_headers()
            return
        if self.headers.get("Authorization") != expected:
            self._json(401, {"code": "BAD_API_KEY_OR_SECRET", "message": "Check api_key/api_secret"})
            return
        prefix = "/api/v5/clients/"
        if not self.path.startswith(prefix):
            self._json(404, {"code": "NOT_FOUND", "message": self.path})
            return
        client_id = self.path[len(prefix) :]
        if client_id not in self.server.online:
            self._json(404, {"code": "CLIENTID_NOT_FOUND", "message": "Client ID not found"})
            return
        self.server.online.discard(client_id)
        self.server.kicks.append((client_id, time.monotonic()))
        self.send_response(204)
        self.end_headers()

    def _json(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def emqx_api() -> Iterator[EmqxApi]:
    api = EmqxApi()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()


@pytest.fixture
async def emqx(backend: Backend, tmp_path: Path, emqx_api: EmqxApi) -> AsyncIterator[httpx.AsyncClient]:
    if not mosquitto_up():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Mosquitto at 127.0.0.1:1883 is not reachable (CI=true)")
        pytest.skip("Mosquitto at 127.0.0.1:1883 is not reachable")
    settings = make_settings(
        backend,
        tmp_path,
        mqtt_broker="emqx",
        mqtt_broker_url="mqtt://127.0.0.1:1883",
        mqtt_broker_api_url=emqx_api.url,
        mqtt_hook_secret=SECRET,
    )
    if not settings.is_sqlite:
        await _reset_postgres(settings)
    app = create_app(settings, migrate=True)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


class Emqx:
    """What EMQX does around a CONNECT: ask our authn hook, then post client.connected / disconnected."""

    def __init__(self, http: httpx.AsyncClient, api: EmqxApi) -> None:
        self.http = http
        self.api = api
        self.sessions: dict[str, int] = {}

    async def connect(self, client_id: str, username: str, password: str) -> bool:
        body = {"clientid": client_id, "username": username, "password": password, "peerhost": "198.51.100.4"}
        answer = await self.http.post("/v1/mqtt/auth", json=body, headers={"X-Hook-Secret": SECRET})
        assert answer.status_code == 200
        if answer.json()["result"] != "allow":
            return False
        self.sessions[client_id] = int(time.time() * 1000)
        self.api.online.add(client_id)
        await self.event(
            {
                "event": "client.connected",
                "clientid": client_id,
                "username": username,
                "peername": "198.51.100.4:50312",
                "sockname": "0.0.0.0:1883",
                "proto_name": "MQTT",
                "proto_ver": 4,
                "keepalive": 60,
                "clean_start": True,
                "connected_at": self.sessions[client_id],
                "timestamp": self.sessions[client_id],
                "node": "emqx@10.0.0.1",
            }
        )
        return True

    async def disconnect(self, client_id: str, username: str, reason: str) -> None:
        self.api.online.discard(client_id)
        now = int(time.time() * 1000)
        await self.event(
            {
                "event": "client.disconnected",
                "reason": reason,
                "clientid": client_id,
                "username": username,
                "peername": "198.51.100.4:50312",
                "sockname": "0.0.0.0:1883",
                "proto_name": "MQTT",
                "proto_ver": 4,
                "connected_at": self.sessions.pop(client_id, now),
                "disconnected_at": now,
                "timestamp": now,
                "node": "emqx@10.0.0.1",
            }
        )

    async def event(self, body: dict[str, Any]) -> None:
        response = await self.http.post("/v1/mqtt/emqx/events", json=body, headers={"X-Hook-Secret": SECRET})
        assert response.status_code == 200, response.text


class Firmware:
    """A device on the broker (Mosquitto here): answers every command with its params."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.desired: list[Any] = []
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fw-{uid}")
        self.client.on_connect = lambda c, u, f, r, p=None: c.subscribe(
            [(f"devices/{uid}/commands", 1), (f"devices/{uid}/desired", 1)]
        )
        self.client.on_subscribe = lambda c, u, mid, codes, p=None: self.ready.set()
        self.client.on_message = self.on_message

    def on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        body = json.loads(message.payload)
        if message.topic.endswith("/desired"):
            self.desired.append(body)
            return
        reply = {"id": body["id"], "status": "ok", "result": body["params"]}
        client.publish(f"devices/{self.uid}/replies", json.dumps(reply), qos=1)

    def __enter__(self) -> Firmware:
        self.client.connect(*MOSQUITTO)
        self.client.loop_start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def world(emqx: httpx.AsyncClient) -> World:
    ctx = emqx.app.state.ctx  # type: ignore[attr-defined]
    return await make_world(emqx, Users(emqx), ctx)


async def disconnect_reasons(http: httpx.AsyncClient, world: World) -> list[Any]:
    found = await events(http, world.admin, type="device_disconnected", device_uid=world.uid)
    return [event["detail"].get("reason") for event in found]


async def test_commands_relay_once_emqx_says_the_device_is_connected(
    emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World
) -> None:
    broker = Emqx(emqx, emqx_api)
    command = {"action": "switch", "params": {"on": True}, "timeout": 5}
    offline = await emqx.post(f"/v1/devices/{world.uid}/commands", json=command, headers=world.owner.headers)
    assert offline.status_code == 409 and offline.json()["error"] == "device_offline"
    with Firmware(world.uid):
        assert await broker.connect(world.uid, world.uid, world.device_token)
        # EMQX's webhook reaches every replica through the fan-out: the connector learns of the
        # connection a moment after EMQX says so, as it would from a real EMQX.
        connector = emqx.app.state.ctx.extras["connector"]  # type: ignore[attr-defined]
        await eventually(lambda: connector.broker.is_online(world.uid))
        reply = await emqx.post(f"/v1/devices/{world.uid}/commands", json=command, headers=world.owner.headers)
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"] == {"on": True}

        async def view() -> dict[str, Any] | None:
            found: dict[str, Any] = (await emqx.get(f"/v1/devices/{world.uid}", headers=world.owner.headers)).json()
            return found if found["online"] else None  # presence is written a moment later

        device = await eventually(view)
        assert device is not None and device["ip"] == "198.51.100.4"
        await broker.disconnect(world.uid, world.uid, "normal")
    assert await eventually(lambda: disconnect_reasons(emqx, world)) == ["client_closed"]
    after = await emqx.post(f"/v1/devices/{world.uid}/commands", json=command, headers=world.owner.headers)
    assert after.status_code == 409


async def test_disabling_a_device_kicks_it_through_the_api_within_5_s(
    emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World
) -> None:
    broker = Emqx(emqx, emqx_api)
    assert await broker.connect(world.uid, world.uid, world.device_token)
    started = time.monotonic()
    disabled = await emqx.post(f"/v1/admin/devices/{world.uid}/disable", headers=world.admin.headers)
    assert disabled.status_code in (200, 204)
    assert await eventually(lambda: emqx_api.kicks, timeout=5)
    (kicked, at), *more = emqx_api.kicks
    assert kicked == world.uid and at - started < 5 and not more
    await broker.disconnect(world.uid, world.uid, "kicked")  # EMQX reports its kick
    assert await eventually(lambda: disconnect_reasons(emqx, world)) == ["disabled"]


async def test_logout_kicks_the_sessions_connections_only(
    emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World
) -> None:
    broker = Emqx(emqx, emqx_api)
    owner, viewer = world.owner, world.viewer
    assert await broker.connect(f"{owner.id}-phone", owner.id, owner.tokens["access_token"])
    assert await broker.connect(viewer.id, viewer.id, viewer.tokens["access_token"])
    assert (await emqx.post("/v1/auth/logout", headers=owner.headers)).status_code == 204
    assert await eventually(lambda: emqx_api.kicks, timeout=5)
    await asyncio.sleep(1)  # nothing else goes
    assert [client_id for client_id, _ in emqx_api.kicks] == [f"{owner.id}-phone"]


async def test_an_expired_token_is_kicked_at_exp(emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World) -> None:
    settings = emqx.app.state.ctx.settings  # type: ignore[attr-defined]
    token = forge(
        settings.keys_dir,
        claims={"sub": world.uid, "jti": f"short-{world.uid}"},
        typ="device+jwt",
        issuer=settings.issuer,
        audience=settings.audience,
        ttl=2,
    )
    broker = Emqx(emqx, emqx_api)
    assert await broker.connect(world.uid, world.uid, token)
    assert await eventually(lambda: emqx_api.kicks, timeout=2 + 5)
    await broker.disconnect(world.uid, world.uid, "kicked")
    assert await eventually(lambda: disconnect_reasons(emqx, world)) == ["token_expired"]


async def test_kicks_are_retried_while_the_api_is_away(
    emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World
) -> None:
    broker = Emqx(emqx, emqx_api)
    assert await broker.connect(world.uid, world.uid, world.device_token)
    emqx_api.up = False
    assert (await emqx.post(f"/v1/admin/devices/{world.uid}/disable", headers=world.admin.headers)).is_success
    await asyncio.sleep(1.5)
    assert not emqx_api.kicks
    emqx_api.up = True
    assert await eventually(lambda: emqx_api.kicks, timeout=5)


async def test_unsharing_kicks_the_sharee(emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World) -> None:
    """EMQX checked (and cached) the subscription once: the sharee's connection goes."""
    broker = Emqx(emqx, emqx_api)
    viewer = world.viewer
    assert await broker.connect(viewer.id, viewer.id, viewer.tokens["access_token"])
    removed = await emqx.delete(f"/v1/devices/{world.uid}/shares/{viewer.id}", headers=world.owner.headers)
    assert removed.status_code == 204
    assert await eventually(lambda: emqx_api.kicks, timeout=5)
    assert emqx_api.kicks[0][0] == viewer.id


async def test_a_connection_no_hook_admitted_is_kicked(
    emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World
) -> None:
    emqx_api.online.add(world.uid)
    await Emqx(emqx, emqx_api).event(
        {"event": "client.connected", "clientid": world.uid, "username": world.uid, "peername": "1.2.3.4:5"}
    )
    assert await eventually(lambda: emqx_api.kicks, timeout=6)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"event": "client.connected"},
        {"event": "session.created", "clientid": "x"},
        {"event": 5, "clientid": ["x"]},
    ],
)
async def test_the_events_route_refuses_what_is_not_an_event(emqx: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await emqx.post("/v1/mqtt/emqx/events", json=body, headers={"X-Hook-Secret": SECRET})
    assert response.status_code == 400 and set(response.json()) == {"error", "detail"}
    unauthorized = await emqx.post("/v1/mqtt/emqx/events", json=body, headers={"X-Hook-Secret": "wrong"})
    assert unauthorized.status_code == 401
    garbage = await emqx.post("/v1/mqtt/emqx/events", content=b"\xff{", headers={"X-Hook-Secret": SECRET})
    assert garbage.status_code == 400
