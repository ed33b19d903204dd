"""MQTT on a real three-node RabbitMQ cluster (SPEC §6 "On a clustered broker"): the connector is the
cluster's identity backend (rabbitmq_auth_backend_http calls it over real HTTP), hears presence on
`amq.rabbitmq.event`, and kicks through the management API. Devices, users and the connector sit on
different nodes. The cluster starts once per test session (tests/rabbitmq.py), on ports of its own."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn

from shared.app import create_app
from shared.context import Context
from shared.settings import Settings
from shared.testing import forge, free_port
from tests.conftest import IN_CI, Backend, Users, _reset_postgres, make_settings
from tests.device_connector.helpers import Mqtt, World, events, eventually, make_world, running_connector
from tests.device_connector.test_mosquitto_clients import run as run_command
from tests.proxy import TcpProxy
from tests.rabbitmq import RABBITMQ_BIN, RabbitCluster, RabbitUnavailableError

SECRET = "rabbit-cluster-secret-" + "q" * 20
WITHIN = 5.0  # SPEC: revocation, role loss, disable and expiry close live connections within 5 s
A, B, C = 0, 1, 2


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def hook_proxy() -> Iterator[TcpProxy]:
    """RabbitMQ's auth backend URL is fixed when a node starts; each test points it at its own server."""
    with TcpProxy() as proxy:
        yield proxy


@pytest.fixture(scope="session")
def rabbit(hook_proxy: TcpProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        _unavailable(f"RabbitMQ is not installed ({RABBITMQ_BIN}/rabbitmq-server is missing)")
    cluster = RabbitCluster(
        hook_base=f"http://127.0.0.1:{hook_proxy.port}", secret=SECRET, root=tmp_path_factory.mktemp("rabbit")
    )
    try:
        cluster.start()
    except RabbitUnavailableError as exc:
        cluster.stop()
        _unavailable(f"the RabbitMQ test cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


class Served:
    """One connector replica (the whole platform, as `handshake serve` runs it) on a real HTTP port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings, migrate=True)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self.task: asyncio.Task[None] | None = None
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    @property
    def ctx(self) -> Context:
        found: Context = self.app.state.ctx
        return found

    async def __aenter__(self) -> Served:
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 30
        while not self.server.started:
            if self.task.done() or time.monotonic() > deadline:
                raise RuntimeError("the platform did not start on the RabbitMQ cluster")
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 30)


def replica_settings(backend: Backend, tmp_path: Path, rabbit: RabbitCluster, node: int, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "mqtt_broker": "rabbitmq",
        "mqtt_broker_url": rabbit.mqtt_url(node),
        "mqtt_broker_api_url": rabbit.api_url(node),
        "mqtt_broker_amqp_url": rabbit.amqp_url(node),
        "mqtt_hook_secret": SECRET,
        **extra,
    }
    return make_settings(backend, tmp_path, **values)


@pytest.fixture
async def served(
    backend: Backend, tmp_path: Path, rabbit: RabbitCluster, hook_proxy: TcpProxy
) -> AsyncIterator[Served]:
    """The platform with its connector attached to node C; the cluster's auth backend points at it."""
    settings = replica_settings(backend, tmp_path, rabbit, C)
    if not settings.is_sqlite:
        await _reset_postgres(settings)
    async with Served(settings) as replica:
        hook_proxy.forward_to("127.0.0.1", replica.port)
        yield replica


@pytest.fixture
async def world(served: Served) -> World:
    return await make_world(served.http, Users(served.http), served.ctx)


class Clients:
    def __init__(self, rabbit: RabbitCluster) -> None:
        self.rabbit = rabbit
        self.made: list[Mqtt] = []

    def new(self, node: int, client_id: str, username: str, password: str, **kwargs: Any) -> Mqtt:
        client = Mqtt(self.rabbit.nodes[node].mqtt_port, client_id, username, password, **kwargs)
        self.made.append(client)
        return client

    async def connect(self, node: int, client_id: str, username: str, password: str, **kwargs: Any) -> Mqtt:
        client = self.new(node, client_id, username, password, **kwargs)
        code = await client.connect(timeout=10)
        assert code == 0, f"CONNECT of {client_id!r} on node {node} answered {code}"
        return client

    async def attempt(self, node: int, client_id: str, username: str, password: str) -> int | None:
        client = self.new(node, client_id, username, password)
        code = await client.connect(timeout=10)
        await client.close()
        return code


@pytest.fixture
async def mqtt(rabbit: RabbitCluster) -> AsyncIterator[Clients]:
    clients = Clients(rabbit)
    try:
        yield clients
    finally:
        for client in clients.made:
            await client.close()


async def online(served: Served, world: World, expected: bool = True) -> bool:
    async def check() -> bool:
        found = await served.http.get(f"/v1/devices/{world.uid}", headers=world.owner.headers)
        return bool(found.json()["online"]) is expected

    return bool(await eventually(check, timeout=10))


async def reasons(served: Served, world: World, count: int = 1) -> list[Any]:
    async def found() -> list[Any]:
        got = await events(served.http, world.admin, type="device_disconnected", device_uid=world.uid)
        return [e["detail"].get("reason") for e in got] if len(got) >= count else []

    result: list[Any] = await eventually(found, timeout=10)
    return result


def command(served: Served, world: World, who: Any, timeout: int = 5) -> Any:
    return served.http.post(
        f"/v1/devices/{world.uid}/commands",
        json={"action": "switch", "params": {"on": True}, "timeout": timeout},
        headers=who.headers,
    )


async def answer_commands(device: Mqtt, uid: str) -> asyncio.Task[None]:
    """The device's firmware: every command on its topic answered with its params."""
    import orjson

    assert await device.subscribe(f"devices/{uid}/commands") == [1]

    async def loop() -> None:
        seen = 0
        while True:
            found = device.messages(f"devices/{uid}/commands")
            for message in found[seen:]:
                body = orjson.loads(message.payload)
                reply = {"id": body["id"], "status": "ok", "result": body["params"]}
                await device.publish(f"devices/{uid}/replies", orjson.dumps(reply))
            seen = len(found)
            await asyncio.sleep(0.01)

    return asyncio.create_task(loop())


# --- the tests ---------------------------------------------------------------------------------------


async def test_a_command_crosses_three_nodes(served: Served, world: World, mqtt: Clients) -> None:
    """Device on node A, owner on node B, the connector (and so the HTTPS command) on node C."""
    offline = await command(served, world, world.owner)
    assert offline.status_code == 409 and offline.json()["error"] == "device_offline"
    device = await mqtt.connect(A, world.uid, world.uid, world.device_token)
    firmware = await answer_commands(device, world.uid)
    try:
        owner = await mqtt.connect(B, f"{world.owner.id}-phone", world.owner.id, world.owner.tokens["access_token"])
        assert await owner.subscribe(f"devices/{world.uid}/replies") == [1]
        assert await online(served, world)
        for who in (world.owner, world.controller):
            reply = await command(served, world, who)
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"] == "ok" and reply.json()["result"] == {"on": True}
        assert await owner.wait_for(f"devices/{world.uid}/replies")
        viewer = await command(served, world, world.viewer)
        assert viewer.status_code == 403
        # A controller's command over MQTT from node B reaches the device on node A.
        await owner.publish(f"devices/{world.uid}/commands", b'{"id":"m1","action":"ping","params":{}}')
        assert await device.wait_for(f"devices/{world.uid}/commands", b'{"id":"m1","action":"ping","params":{}}')
    finally:
        firmware.cancel()
    device_view = (await served.http.get(f"/v1/devices/{world.uid}", headers=world.owner.headers)).json()
    assert device_view["ip"] == "127.0.0.1" and device_view["connected_at"]


async def test_connect_rules(served: Served, world: World, mqtt: Clients) -> None:
    uid, owner = world.uid, world.owner
    token = owner.tokens["access_token"]
    assert await mqtt.attempt(A, uid, uid, world.device_token) == 0
    assert await mqtt.attempt(B, f"{owner.id}-tablet", owner.id, token) == 0
    refused = [
        (uid, owner.id, token),  # a user taking over the device's client id
        (world.viewer.id, owner.id, token),  # another user's client id
        (f"{owner.id}-" + "x" * 41, owner.id, token),
        (uid, uid, token),  # a user token as a device's
        (owner.id, owner.id, world.device_token),  # and the other way
        (uid, uid, "garbage"),
        (uid, uid, "x" * 9000),
    ]
    for client_id, username, password in refused:
        assert await mqtt.attempt(A, client_id, username, password) == 4, (client_id, username)
    failures = await events(served.http, world.admin, type="mqtt_auth_failed", at_least=len(refused))
    assert len(failures) >= len(refused)


async def test_acl_on_the_cluster(served: Served, world: World, mqtt: Clients) -> None:
    uid = world.uid
    device = await mqtt.connect(A, uid, uid, world.device_token)
    assert await device.subscribe(f"devices/{uid}/commands", f"devices/{uid}/desired") == [1, 1]
    viewer = await mqtt.connect(B, world.viewer.id, world.viewer.id, world.viewer.tokens["access_token"])
    assert await viewer.subscribe(f"devices/{uid}/state", f"devices/{uid}/events", f"devices/{uid}/desired") == [1] * 3
    await device.publish(f"devices/{uid}/state", b'{"on":true}')
    assert await viewer.wait_for(f"devices/{uid}/state", b'{"on":true}')

    # What is denied: RabbitMQ closes the connection that asked (SPEC: the docs say so).
    denied = [
        ("viewer", B, "subscribe", f"devices/{uid}/replies"),
        ("viewer", B, "subscribe", f"devices/{uid}/commands"),
        ("viewer", B, "publish", f"devices/{uid}/commands"),
        ("owner", C, "subscribe", f"devices/{uid}/#"),
        ("owner", C, "subscribe", f"devices/{uid}/+"),
        ("owner", C, "subscribe", "devices/+/state"),
        ("owner", C, "subscribe", "#"),
        ("stranger", A, "subscribe", f"devices/{uid}/state"),
        ("stranger", A, "publish", f"devices/{uid}/commands"),
        ("device", A, "publish", f"devices/{uid}/commands"),
        ("device", A, "subscribe", f"devices/{uid}/replies"),
        ("other-device", B, "publish", f"devices/{uid}/state"),
    ]
    (other,) = await _provision(served, world)
    for who, node, action, topic in denied:
        if who == "device":
            conn = await mqtt.connect(node, f"{uid}", uid, world.device_token)
        elif who == "other-device":
            conn = await mqtt.connect(node, other[0], other[0], other[1])
        else:
            person = getattr(world, who)
            conn = await mqtt.connect(node, f"{person.id}-acl", person.id, person.tokens["access_token"])
        if action == "subscribe":
            conn.client.subscribe(topic, qos=1)
        else:
            conn.publish_nowait(topic, b'{"id":"x","action":"unlock","params":{}}')
        assert await conn.wait_disconnected(5), (who, action, topic)
        await conn.close()
    # Nothing denied reached the device, and the viewer's allowed subscriptions went on working.
    assert device.messages(f"devices/{uid}/commands") == []
    await asyncio.sleep(0.2)
    device = await mqtt.connect(A, uid, uid, world.device_token)
    await device.publish(f"devices/{uid}/events", b"still")
    assert await viewer.wait_for(f"devices/{uid}/events", b"still")


async def _provision(served: Served, world: World) -> list[tuple[str, str]]:
    made = await served.http.post("/v1/admin/devices", json={"model": "plug"}, headers=world.admin.headers)
    assert made.status_code == 201, made.text
    out = []
    for device in made.json()["devices"]:
        token = await served.http.post("/v1/devices/token", json={"uid": device["uid"], "secret": device["secret"]})
        out.append((device["uid"], token.json()["access_token"]))
    return out


async def test_revocations_close_connections_within_5_s(served: Served, world: World, mqtt: Clients) -> None:
    """Logout, unshare, transfer and disable each close exactly the connections they concern."""
    uid = world.uid
    owner = await mqtt.connect(B, f"{world.owner.id}-phone", world.owner.id, world.owner.tokens["access_token"])
    controller = await mqtt.connect(
        C, world.controller.id, world.controller.id, world.controller.tokens["access_token"]
    )
    viewer = await mqtt.connect(A, world.viewer.id, world.viewer.id, world.viewer.tokens["access_token"])
    device = await mqtt.connect(A, uid, uid, world.device_token)
    bystander = await mqtt.connect(B, world.stranger.id, world.stranger.id, world.stranger.tokens["access_token"])
    timings: dict[str, float] = {}

    async def closes(conn: Mqtt, name: str, action: Any) -> None:
        started = time.monotonic()
        response = await action
        assert response.status_code in (200, 204), response.text
        assert await conn.wait_disconnected(WITHIN), f"{name} did not close the connection within {WITHIN} s"
        timings[name] = time.monotonic() - started

    await closes(
        viewer,
        "unshare",
        served.http.delete(f"/v1/devices/{uid}/shares/{world.viewer.id}", headers=world.owner.headers),
    )
    await closes(controller, "logout", served.http.post("/v1/auth/logout", headers=world.controller.headers))
    await closes(
        owner,
        "transfer",
        served.http.post(
            f"/v1/devices/{uid}/transfer", json={"username": world.stranger.username}, headers=world.owner.headers
        ),
    )
    await closes(device, "disable", served.http.post(f"/v1/admin/devices/{uid}/disable", headers=world.admin.headers))
    assert bystander.is_connected, "a connection nothing concerned was closed"
    assert await reasons(served, world) == ["disabled"]
    print("revocation-to-close (s):", {k: round(v, 2) for k, v in timings.items()})


async def test_an_expired_token_is_closed_at_exp(served: Served, world: World, mqtt: Clients) -> None:
    settings = served.settings
    token = forge(
        settings.keys_dir,
        claims={"sub": world.uid, "jti": f"short-{world.uid}"},
        typ="device+jwt",
        issuer=settings.issuer,
        audience=settings.audience,
        ttl=3,
    )
    device = await mqtt.connect(A, world.uid, world.uid, token)
    assert await device.wait_disconnected(3 + WITHIN), "RabbitMQ kept a connection past its token's exp"
    assert await reasons(served, world) == ["token_expired"]


def short_tokens(settings: Settings, world: World) -> tuple[str, str]:
    """A device token and an owner's access token (of the owner's session) that live 3 s."""
    device = forge(
        settings.keys_dir,
        claims={"sub": world.uid},
        typ="device+jwt",
        issuer=settings.issuer,
        audience=settings.audience,
        ttl=3,
        drop=("sid",),
    )
    sid = jwt.decode(world.owner.tokens["access_token"], options={"verify_signature": False})["sid"]
    user = forge(
        settings.keys_dir,
        claims={"sub": world.owner.id, "sid": sid, "role": "user"},
        issuer=settings.issuer,
        audience=settings.audience,
        ttl=3,
    )
    return device, user


async def renewed_connections_outlive_their_first_tokens(served: Served, world: World, mqtt: Clients) -> None:
    """SPEC §12 on RabbitMQ: fresh tokens on `devices/{uid}/token` and `users/{user_id}/token` move the
    deadlines the connector kicks at; nobody may read those topics."""
    device_token, user_token = short_tokens(served.settings, world)
    device = await mqtt.connect(A, world.uid, world.uid, device_token)
    app = await mqtt.connect(B, f"{world.owner.id}-app", world.owner.id, user_token)
    await device.publish(f"devices/{world.uid}/token", world.device_token)
    await app.publish(f"users/{world.owner.id}/token", world.owner.tokens["access_token"])
    await asyncio.sleep(3 + 3)
    assert device.is_connected, "a renewed device connection was kicked at its first token's exp"
    assert app.is_connected, "a renewed app connection was kicked at its first token's exp"
    # Still online for the relay: the command goes out (no 409); this device does not answer it.
    reply = await command(served, world, world.owner)
    assert reply.status_code == 504, reply.text
    # Nobody reads a token topic: RabbitMQ closes a client whose SUBSCRIBE is refused.
    snoop = await mqtt.connect(C, world.viewer.id, world.viewer.id, world.viewer.tokens["access_token"])
    snoop.client.subscribe(f"devices/{world.uid}/token", qos=1)
    assert await snoop.wait_disconnected(WITHIN)
    assert await events(served.http, world.admin, type="device_disconnected", device_uid=world.uid) == []


async def test_a_renewed_connection_outlives_its_first_token(served: Served, world: World, mqtt: Clients) -> None:
    await renewed_connections_outlive_their_first_tokens(served, world, mqtt)


async def test_a_bad_renewal_leaves_the_old_deadline(served: Served, world: World, mqtt: Clients) -> None:
    device_token, _ = short_tokens(served.settings, world)
    device = await mqtt.connect(A, world.uid, world.uid, device_token)
    await device.publish(f"devices/{world.uid}/token", world.owner.tokens["access_token"])  # the wrong kind
    assert await device.wait_disconnected(3 + WITHIN), "a bad renewal kept the connection past its deadline"
    assert await reasons(served, world) == ["token_expired"]


async def test_every_replica_honours_a_renewal(
    backend: Backend, tmp_path: Path, served: Served, world: World, mqtt: Clients, rabbit: RabbitCluster
) -> None:
    if served.settings.redis_url is None:
        pytest.skip("replicas share Redis and PostgreSQL; the SQLite run is one process")
    (tmp_path / "second").mkdir()
    second = replica_settings(backend, tmp_path / "second", rabbit, A).model_copy(
        update={
            "database_url": served.settings.database_url,
            "redis_url": served.settings.redis_url,
            "redis_prefix": served.settings.redis_prefix,
            "keys_dir": served.settings.keys_dir,
        }
    )
    async with Served(second):  # either replica would kick at the old exp had it not heard the renewal
        await renewed_connections_outlive_their_first_tokens(served, world, mqtt)


async def test_presence_and_reasons(served: Served, world: World, mqtt: Clients) -> None:
    device = await mqtt.connect(A, world.uid, world.uid, world.device_token)
    assert await online(served, world)
    await device.close()  # a clean DISCONNECT
    assert await online(served, world, False)
    device = await mqtt.connect(B, world.uid, world.uid, world.device_token)
    assert await online(served, world)
    await device.drop()  # a dropped line
    assert await online(served, world, False)
    assert await reasons(served, world, 2) == ["client_closed", "client_closed"]
    connected = await events(served.http, world.admin, type="device_connected", device_uid=world.uid)
    assert len(connected) == 2
    stats = (await served.http.get("/v1/admin/stats", headers=world.admin.headers)).json()
    assert stats["devices_online"] == 0


async def test_presence_survives_losing_the_event_connection(
    served: Served, world: World, mqtt: Clients, rabbit: RabbitCluster
) -> None:
    """RabbitMQ's events reach the connector over one AMQP connection. While it is down, what happens is
    not heard: once it is back, the connector lists the broker's connections, so a device that left
    meanwhile goes offline and one that came is online (and may be sent commands)."""
    (other_uid, other_token), *_ = await _provision(served, world)
    leaving = await mqtt.connect(A, world.uid, world.uid, world.device_token)
    assert await online(served, world)
    async with httpx.AsyncClient(base_url=rabbit.api_url(C), timeout=10) as api:

        async def amqp_connections() -> list[str]:  # the API lists a connection seconds after it opens
            listed = (await api.get("/api/connections", params={"columns": "name,user,protocol"})).json()
            return [c["name"] for c in listed if c["user"] == rabbit.admin_user and "AMQP" in c["protocol"]]

        ours = await eventually(amqp_connections, timeout=15)
        assert ours
        for name in ours:
            await api.delete(f"/api/connections/{urllib.parse.quote(name, safe='')}")
    await leaving.close()
    coming = await mqtt.connect(B, other_uid, other_uid, other_token)
    assert coming.is_connected

    async def settled() -> bool:
        left = (await served.http.get(f"/v1/devices/{world.uid}", headers=world.owner.headers)).json()
        listed = await served.http.get("/v1/admin/devices", params={"online": "true"}, headers=world.admin.headers)
        online_now = {device["uid"] for device in listed.json()}
        return left["online"] is False and other_uid in online_now

    if not await eventually(settled, timeout=30):
        left = (await served.http.get(f"/v1/devices/{world.uid}", headers=world.owner.headers)).json()
        listed = await served.http.get("/v1/admin/devices", params={"online": "true"}, headers=world.admin.headers)
        broker = running_connector(served.ctx).broker
        pytest.fail(
            f"presence stayed as it was when the events were lost: left online={left['online']}, online now="
            f"{[d['uid'] for d in listed.json()]}, came {other_uid} in the book: {broker.is_online(other_uid)}"
        )
    assert running_connector(served.ctx).broker.is_online(other_uid)
    assert not running_connector(served.ctx).broker.is_online(world.uid)


async def test_desired_state_reaches_a_device_on_another_node(served: Served, world: World, mqtt: Clients) -> None:
    put = await served.http.put(
        f"/v1/devices/{world.uid}/state/desired", json={"brightness": 40}, headers=world.owner.headers
    )
    assert put.status_code == 200
    for node in (A, B):  # the connector published on node C: retained messages stay there
        device = await mqtt.connect(node, world.uid, world.uid, world.device_token)
        assert await device.subscribe(f"devices/{world.uid}/desired") == [1]
        assert await device.wait_for(f"devices/{world.uid}/desired", b'{"brightness":40}', timeout=5), node
        await device.close()
        await online(served, world, False)


async def test_two_replicas_kick_and_record_once(
    backend: Backend, tmp_path: Path, served: Served, world: World, mqtt: Clients, rabbit: RabbitCluster
) -> None:
    (tmp_path / "second").mkdir()
    second = replica_settings(backend, tmp_path / "second", rabbit, A)
    second = second.model_copy(
        update={
            "database_url": served.settings.database_url,
            "redis_url": served.settings.redis_url,
            "redis_prefix": served.settings.redis_prefix,
            "keys_dir": served.settings.keys_dir,
        }
    )
    if served.settings.redis_url is None:
        pytest.skip("replicas share Redis and PostgreSQL; the SQLite run is one process")
    async with Served(second) as replica:
        device = await mqtt.connect(B, world.uid, world.uid, world.device_token)
        firmware = await answer_commands(device, world.uid)
        try:
            assert await online(served, world)
            for each in (served, replica):  # commands relay through either replica
                reply = await command(each, world, world.owner)
                assert reply.status_code == 200, reply.text
            assert (
                await served.http.post(f"/v1/admin/devices/{world.uid}/disable", headers=world.admin.headers)
            ).is_success
            assert await device.wait_disconnected(WITHIN)
        finally:
            firmware.cancel()
        await asyncio.sleep(1.5)
        assert await reasons(served, world) == ["disabled"]
        connected = await events(served.http, world.admin, type="device_connected", device_uid=world.uid)
        assert len(connected) == 1


async def test_kicks_wait_out_an_unreachable_management_api(
    backend: Backend,
    tmp_path: Path,
    rabbit: RabbitCluster,
    hook_proxy: TcpProxy,
    mqtt: Clients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with TcpProxy() as api_proxy:
        api = rabbit.api_url(C)
        creds, host = api.split("://", 1)[1].rsplit("@", 1)
        port = int(host.rsplit(":", 1)[1])
        settings = replica_settings(
            backend,
            tmp_path,
            rabbit,
            C,
            mqtt_broker_api_url=f"http://{creds}@{api_proxy.forward_to('127.0.0.1', port)}",
        )
        if not settings.is_sqlite:
            await _reset_postgres(settings)
        async with Served(settings) as replica:
            hook_proxy.forward_to("127.0.0.1", replica.port)
            world = await make_world(replica.http, Users(replica.http), replica.ctx)
            device = await mqtt.connect(A, world.uid, world.uid, world.device_token)
            assert await online(replica, world)
            api_proxy.down()
            disabled = await replica.http.post(f"/v1/admin/devices/{world.uid}/disable", headers=world.admin.headers)
            assert disabled.is_success
            await asyncio.sleep(2)
            assert device.is_connected  # the API is away: nobody could close it yet
            assert any("management API" in r.getMessage() for r in caplog.records)
            api_proxy.up()
            assert await device.wait_disconnected(WITHIN), "the kick was lost while the API was away"
            assert await reasons(replica, world) == ["disabled"]


async def test_hooks_deny_while_the_database_is_down(
    backend: Backend, tmp_path: Path, rabbit: RabbitCluster, hook_proxy: TcpProxy, mqtt: Clients
) -> None:
    if backend.name != "postgres":
        pytest.skip("a database behind a proxy: the PostgreSQL run")
    with TcpProxy() as db_proxy:
        assert backend.database_url is not None
        url = backend.database_url
        hostport = url.split("@", 1)[1].split("/", 1)[0] if "@" in url else url.split("://", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        via = db_proxy.forward_to(host, int(port))
        settings = replica_settings(backend, tmp_path, rabbit, C)
        settings = settings.model_copy(update={"database_url": url.replace(hostport, via)})
        await _reset_postgres(settings)
        async with Served(settings) as replica:
            hook_proxy.forward_to("127.0.0.1", replica.port)
            world = await make_world(replica.http, Users(replica.http), replica.ctx)
            db_proxy.down()
            await asyncio.sleep(settings.revocation_max_staleness + 1)
            for client_id, username, password in (
                (world.uid, world.uid, world.device_token),
                (world.owner.id, world.owner.id, world.owner.tokens["access_token"]),
            ):
                assert await mqtt.attempt(A, client_id, username, password) == 4
            db_proxy.up()

            async def accepted() -> bool:
                return await mqtt.attempt(A, world.uid, world.uid, world.device_token) == 0

            assert await eventually(accepted, timeout=15, interval=0.5), "no CONNECT accepted after recovery"


async def test_a_restarted_connector_keeps_the_cluster_honest(
    backend: Backend, tmp_path: Path, rabbit: RabbitCluster, hook_proxy: TcpProxy, mqtt: Clients
) -> None:
    """The broker outlives the connector. After a restart the connector finds the connections that exist:
    with Redis, where admissions are kept, it takes them over (a disable still closes them); without it,
    nobody can vouch for their tokens any more, and they are closed (the device reconnects)."""
    settings = replica_settings(backend, tmp_path, rabbit, C)
    if not settings.is_sqlite:
        await _reset_postgres(settings)
    async with Served(settings) as first:
        hook_proxy.forward_to("127.0.0.1", first.port)
        world = await make_world(first.http, Users(first.http), first.ctx)
        device = await mqtt.connect(A, world.uid, world.uid, world.device_token)
        assert await online(first, world)
    async with Served(settings) as second:
        hook_proxy.forward_to("127.0.0.1", second.port)
        if settings.redis_url is None:
            assert await device.wait_disconnected(15), "a connection nobody vouches for stayed open"
            assert await online(second, world, False)
            return
        await asyncio.sleep(8)  # past the connector's second look at the broker's connections
        assert device.is_connected
        assert await online(second, world)
        disabled = await second.http.post(f"/v1/admin/devices/{world.uid}/disable", headers=world.admin.headers)
        assert disabled.is_success
        assert await device.wait_disconnected(WITHIN)
        assert await online(second, world, False)


async def test_mosquitto_clients_on_the_cluster(served: Served, world: World, rabbit: RabbitCluster) -> None:
    """Debian's mosquitto_sub and mosquitto_pub, a second MQTT client implementation, on two nodes."""
    if shutil.which("mosquitto_sub") is None:
        _unavailable("mosquitto-clients is not installed (apt-get install mosquitto-clients)")
    topic = f"devices/{world.uid}/state"

    def node(i: int) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(rabbit.nodes[i].mqtt_port), "-V", "mqttv311", "-q", "1"]

    viewer = world.viewer
    subscriber = asyncio.create_task(
        run_command(
            "mosquitto_sub",
            *node(B),
            "-i",
            f"{viewer.id}-cli",
            "-u",
            viewer.id,
            "-P",
            viewer.tokens["access_token"],
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "10",
        )
    )
    await asyncio.sleep(1.5)  # subscribed
    code, _, err = await run_command(
        "mosquitto_pub",
        *node(A),
        "-i",
        world.uid,
        "-u",
        world.uid,
        "-P",
        world.device_token,
        "-t",
        topic,
        "-m",
        '{"on":true}',
    )
    assert code == 0, err
    code, out, err = await subscriber
    assert code == 0, err
    assert out.strip() == '{"on":true}'
    # A stranger's mosquitto_sub is refused at CONNECT (RabbitMQ's code for a deny: 4).
    stranger = world.stranger
    code, _, err = await run_command(
        "mosquitto_sub",
        *node(C),
        "-i",
        world.uid,
        "-u",
        stranger.id,
        "-P",
        stranger.tokens["access_token"],
        "-t",
        topic,
        "-C",
        "1",
        "-W",
        "3",
    )
    assert code != 0

    # The reported state reached the platform too (apps read it over HTTPS on a cluster).
    async def reported() -> object:
        state = await served.http.get(f"/v1/devices/{world.uid}/state", headers=viewer.headers)
        return state.json()["reported"]

    assert await eventually(reported) == {"on": True}


async def test_a_will_goes_only_where_its_client_may_publish(served: Served, world: World, mqtt: Clients) -> None:
    """RabbitMQ publishes a will like any message of its client, through the topic check (SPEC §6)."""
    uid = world.uid
    device = await mqtt.connect(A, uid, uid, world.device_token)
    assert await device.subscribe(f"devices/{uid}/commands") == [1]
    owner = await mqtt.connect(C, world.owner.id, world.owner.id, world.owner.tokens["access_token"])
    assert await owner.subscribe(f"devices/{uid}/state") == [1]
    viewer = world.viewer
    bad = mqtt.new(
        B,
        f"{viewer.id}-will",
        viewer.id,
        viewer.tokens["access_token"],
        will=(f"devices/{uid}/commands", b'{"id":"w","action":"unlock","params":{}}', 1, False),
    )
    assert await bad.connect(timeout=10) == 0
    await bad.drop()
    controller = world.controller
    good = mqtt.new(
        B,
        f"{controller.id}-will",
        controller.id,
        controller.tokens["access_token"],
        will=(f"devices/{uid}/commands", b'{"id":"g","action":"lock","params":{}}', 1, False),
    )
    assert await good.connect(timeout=10) == 0
    await good.drop()
    assert await device.wait_for(f"devices/{uid}/commands", b'{"id":"g","action":"lock","params":{}}', timeout=10)
    assert b'{"id":"w","action":"unlock","params":{}}' not in device.payloads()
