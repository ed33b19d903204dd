"""The EMQX adapter (SPEC §6 "On a clustered broker"). EMQX cannot be installed on this machine, so the
broker the connector publishes and subscribes through is the real Mosquitto of this machine, and EMQX's
own part is played to its documented shapes (EMQX 5.8: the HTTP authn request, the rule engine's
`client.connected` / `client.disconnected` bodies, `DELETE /api/v5/clients/{clientid}` answering 204 or
404 `CLIENTID_NOT_FOUND`), by the test: it calls our hooks as EMQX would, posts its events, and serves
its management API from a small recording server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import secrets
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
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

from device_connector import mqtt_relay
from device_connector.clustered import ClusteredBroker
from device_connector.mqtt_relay import RECONNECT_MAX_DELAY, MqttRelay
from shared.app import create_app
from shared.errors import ServiceUnavailableError
from shared.testing import forge
from tests.conftest import Backend, Users, _reset_postgres, make_settings
from tests.device_connector.helpers import World, events, eventually, make_world, running_connector
from tests.proxy import TcpProxy

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


def retained_under(topic_filter: str, wait: float = 1.0, *, expect: str | None = None) -> dict[str, bytes]:
    """The retained messages the machine's Mosquitto holds on topics matching the filter: what came
    within `wait` of the SUBACK, or, given `expect`, as soon as that topic's message came (within 10 s:
    a loaded machine took more than a second once)."""
    found: dict[str, bytes] = {}
    arrived = threading.Event()

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.retain:
            found[message.topic] = bytes(message.payload)
            if message.topic == expect:
                arrived.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hs-test-retained-{secrets.token_hex(4)}")
    client.on_message = on_message
    client.connect(*MOSQUITTO)
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    arrived.wait(10 if expect is not None else wait)  # a broker sends what it retains right after the SUBACK
    client.disconnect()
    client.loop_stop()
    return found


def clear_retained(topics: list[str]) -> None:
    """An empty retained payload removes what a topic retains (MQTT-3.3.1-10): the suite leaves the
    shared broker as it found it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hs-test-clear-{secrets.token_hex(4)}")
    client.connect(*MOSQUITTO)
    client.loop_start()
    for topic in topics:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def retain_for(topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hs-test-leftover-{secrets.token_hex(4)}")
    client.connect(*MOSQUITTO)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


class AppClient(httpx.AsyncClient):
    """A client of the app in this process, which keeps the app (its state holds the Context)."""

    app: FastAPI


@contextlib.asynccontextmanager
async def connector_on_mosquitto(
    backend: Backend, tmp_path: Path, emqx_api: EmqxApi
) -> AsyncIterator[tuple[AppClient, LifespanManager]]:
    """The whole platform with the EMQX adapter, its MQTT client on the machine's Mosquitto."""
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
        async with AppClient(transport=transport, base_url="http://testserver") as http:
            http.app = app
            yield http, manager


@pytest.fixture
async def emqx(backend: Backend, tmp_path: Path, emqx_api: EmqxApi) -> AsyncIterator[AppClient]:
    async with connector_on_mosquitto(backend, tmp_path, emqx_api) as (http, _):
        yield http


class Emqx:
    """What EMQX does around a CONNECT: ask our authn hook, then post client.connected / disconnected."""

    def __init__(self, http: httpx.AsyncClient, api: EmqxApi) -> None:
        self.http = http
        self.api = api
        self.sessions: dict[str, int] = {}

    async def connect(self, client_id: str, username: str, password: str) -> bool:
        return await self.authenticate(client_id, username, password) and await self.connected(client_id, username)

    async def authenticate(self, client_id: str, username: str, password: str) -> bool:
        """The CONNECT's authentication alone: EMQX posts client.connected once the client is in."""
        body = {"clientid": client_id, "username": username, "password": password, "peerhost": "198.51.100.4"}
        answer = await self.http.post("/v1/mqtt/auth", json=body, headers={"X-Hook-Secret": SECRET})
        assert answer.status_code == 200
        return bool(answer.json()["result"] == "allow")

    async def connected(self, client_id: str, username: str) -> bool:
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
async def world(emqx: AppClient) -> AsyncIterator[World]:
    """A world whose device has a UID of its own (its topics are this test's alone); whatever the test
    left retained on the machine's Mosquitto under them is cleared afterwards, and checked gone."""
    ctx = emqx.app.state.ctx
    made = await make_world(emqx, Users(emqx), ctx)
    yield made
    mine = f"devices/{made.uid}/#"
    await asyncio.to_thread(clear_retained, list(await asyncio.to_thread(retained_under, mine)))
    assert await asyncio.to_thread(retained_under, mine, 0.5) == {}


async def disconnect_reasons(http: httpx.AsyncClient, world: World) -> list[Any]:
    found = await events(http, world.admin, type="device_disconnected", device_uid=world.uid)
    return [event["detail"].get("reason") for event in found]


async def test_commands_relay_once_emqx_says_the_device_is_connected(
    emqx: AppClient, emqx_api: EmqxApi, world: World
) -> None:
    broker = Emqx(emqx, emqx_api)
    command = {"action": "switch", "params": {"on": True}, "timeout": 5}
    offline = await emqx.post(f"/v1/devices/{world.uid}/commands", json=command, headers=world.owner.headers)
    assert offline.status_code == 409 and offline.json()["error"] == "device_offline"
    with Firmware(world.uid):
        assert await broker.connect(world.uid, world.uid, world.device_token)
        # EMQX's webhook reaches every replica through the fan-out: the connector learns of the
        # connection a moment after EMQX says so, as it would from a real EMQX.
        connector = running_connector(emqx.app.state.ctx)
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


async def test_an_expired_token_is_kicked_at_exp(emqx: AppClient, emqx_api: EmqxApi, world: World) -> None:
    settings = emqx.app.state.ctx.settings
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


async def test_a_share_removed_before_the_connector_heard_of_the_connection_kicks_it_too(
    emqx: httpx.AsyncClient, emqx_api: EmqxApi, world: World
) -> None:
    """EMQX admitted the sharee (and may have authorized its subscriptions) before the unshare, and
    its client.connected reaches the connector only after it: the connection was unknown when the
    access change came, so it is judged against the roles it was admitted with when it is heard of."""
    broker = Emqx(emqx, emqx_api)
    viewer = world.viewer
    assert await broker.authenticate(viewer.id, viewer.id, viewer.tokens["access_token"])
    removed = await emqx.delete(f"/v1/devices/{world.uid}/shares/{viewer.id}", headers=world.owner.headers)
    assert removed.status_code == 204
    await asyncio.sleep(0.5)  # the access change has come and gone
    assert not emqx_api.kicks
    assert await broker.connected(viewer.id, viewer.id)
    assert await eventually(lambda: emqx_api.kicks, timeout=5)
    assert emqx_api.kicks[0][0] == viewer.id
    # Nothing lost since its admission: a connection heard of late is kept.
    owner = world.owner
    assert await broker.authenticate(f"{owner.id}-tablet", owner.id, owner.tokens["access_token"])
    assert await broker.connected(f"{owner.id}-tablet", owner.id)
    await asyncio.sleep(1)
    assert [client_id for client_id, _ in emqx_api.kicks] == [viewer.id]


async def test_a_share_removed_while_the_connector_looked_the_connection_up_kicks_it(
    emqx: AppClient, emqx_api: EmqxApi, world: World
) -> None:
    """The unshare comes after the connector read the sharee's roles and before the connection is in
    its book, so the access change finds nothing to narrow: the roles are read once more after."""
    broker = Emqx(emqx, emqx_api)
    viewer = world.viewer
    adapter = running_connector(emqx.app.state.ctx).broker
    assert isinstance(adapter, ClusteredBroker)
    claim = adapter.once.claim

    async def unshare_first(key: str, value: str = "1") -> bool:
        if key.startswith(f"created:{viewer.id}@") and not unshared:
            removed = await emqx.delete(f"/v1/devices/{world.uid}/shares/{viewer.id}", headers=world.owner.headers)
            unshared.append(removed.status_code)
            await asyncio.sleep(0.5)  # the access change has come and gone
            assert not emqx_api.kicks
        return await claim(key, value)

    unshared: list[int] = []
    adapter.once.claim = unshare_first  # type: ignore[method-assign]
    assert await broker.authenticate(viewer.id, viewer.id, viewer.tokens["access_token"])
    assert await broker.connected(viewer.id, viewer.id)
    assert await eventually(lambda: emqx_api.kicks, timeout=5)
    assert unshared == [204]
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


async def test_desired_state_is_retained_on_the_broker_and_reaches_the_device(
    emqx: httpx.AsyncClient, world: World
) -> None:
    """EMQX keeps retained messages itself: the connector publishes desired state retained there (the
    world fixture clears it afterwards, so the shared broker keeps nothing of this test)."""
    put = await emqx.put(f"/v1/devices/{world.uid}/state/desired", json={"brightness": 80}, headers=world.owner.headers)
    assert put.status_code == 200, put.text
    topic = f"devices/{world.uid}/desired"
    retained = await asyncio.to_thread(functools.partial(retained_under, topic, expect=topic))
    assert json.loads(retained[topic]) == {"brightness": 80}
    with Firmware(world.uid) as firmware:  # connects after the PUT: the broker hands it the retained state
        assert await eventually(lambda: firmware.desired) == [{"brightness": 80}]


async def test_what_others_left_retained_on_the_broker_changes_nothing(
    backend: Backend, tmp_path: Path, emqx_api: EmqxApi
) -> None:
    """Leftovers on the shared broker from someone else (state of a device this deployment does not
    know, a stray reply, a payload that is not JSON) reach the connector as it subscribes: it starts,
    relays, and still shuts down within 5 s; the leftovers are cleared afterwards."""
    stranger = f"ZZ{secrets.token_hex(9).upper()}"
    leftovers = {
        f"devices/{stranger}/state": b'{"on": true}',
        f"devices/{stranger}/replies": b'{"id": "abc", "status": "ok", "result": {}}',
        f"devices/{stranger}X/state": b"\xff not json",
    }
    for topic, payload in leftovers.items():
        await asyncio.to_thread(retain_for, topic, payload)
    try:
        async with connector_on_mosquitto(backend, tmp_path, emqx_api) as (http, _):
            ctx = http.app.state.ctx
            world = await make_world(http, Users(http), ctx)
            broker = Emqx(http, emqx_api)
            with Firmware(world.uid):
                assert await broker.connect(world.uid, world.uid, world.device_token)
                # The connector learns of the connection through the fan-out, a moment after EMQX.
                connector = running_connector(ctx)
                assert await eventually(lambda: connector.broker.is_online(world.uid))
                command = {"action": "switch", "params": {"on": True}, "timeout": 5}
                reply = await http.post(f"/v1/devices/{world.uid}/commands", json=command, headers=world.owner.headers)
                assert reply.status_code == 200 and reply.json()["result"] == {"on": True}, reply.text
            started = time.monotonic()
        assert time.monotonic() - started < 5, "the connector took longer than its shutdown bound"
    finally:
        await asyncio.to_thread(clear_retained, list(leftovers))
    for topic in leftovers:
        assert await asyncio.to_thread(retained_under, topic, 0.3) == {}, topic


async def test_the_relay_reconnects_within_seconds_of_a_long_broker_outage() -> None:
    """paho's own backoff grows to 2 minutes: after a 20 s outage its next try would come some 11 s
    after the broker is back (and later still after longer ones). The relay waits at most 5 s."""
    if not mosquitto_up():
        pytest.skip("Mosquitto at 127.0.0.1:1883 is not reachable")
    with TcpProxy() as proxy:
        via = proxy.forward_to(*MOSQUITTO)
        relay = MqttRelay(f"mqtt://{via}", client_id=f"hs-test-relay-{secrets.token_hex(4)}")
        await relay.start(lambda topic, data: None)
        try:
            proxy.down()
            assert await eventually(lambda: not relay.connected(), timeout=5)
            await asyncio.sleep(20)
            proxy.up()
            back = time.monotonic()
            assert await eventually(relay.connected, timeout=RECONNECT_MAX_DELAY + 2), "no reconnect"
            assert time.monotonic() - back <= RECONNECT_MAX_DELAY + 1
        finally:
            await relay.stop()


async def test_a_retained_publish_returns_once_the_broker_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Desired state is answered 200 once the broker has acknowledged it: a subscriber right after gets
    it as retained (sent but not yet held, it reached one live, unflagged). A broker that never
    acknowledges makes it a 503, not a 200."""
    if not mosquitto_up():
        pytest.skip("Mosquitto at 127.0.0.1:1883 is not reachable")
    monkeypatch.setattr(mqtt_relay, "RETAIN_TIMEOUT", 1.0)
    topic = f"devices/HSRELAY{secrets.token_hex(4).upper()}/desired"
    with TcpProxy() as proxy:
        relay = MqttRelay(f"mqtt://{proxy.forward_to(*MOSQUITTO)}", client_id=f"hs-test-relay-{secrets.token_hex(4)}")
        await relay.start(lambda topic, data: None)
        try:
            await relay.publish(topic, b'{"on": true}', retain=True)
            assert (await asyncio.to_thread(retained_under, topic, expect=topic))[topic] == b'{"on": true}'
            proxy.hang()
            started = time.monotonic()
            with pytest.raises(ServiceUnavailableError, match="did not acknowledge"):
                await relay.publish(topic, b'{"on": false}', retain=True)
            assert time.monotonic() - started >= 0.9
            proxy.up()
        finally:
            await relay.stop()
            await asyncio.to_thread(clear_retained, [topic])
