"""Shared helpers of the device connector tests: a small paho wrapper that is safe to drive from the
test's event loop (the app and its embedded broker run on that loop, so a test never blocks it: every
wait is `await asyncio.sleep` polling or `asyncio.to_thread`), raw sockets for malformed traffic, a
world of users and devices built through the HTTP API, and an HTTP transport that lets the synchronous
SDK client talk to the in-process app.

Use the `mqtt` fixture in a test module with `from tests.device_connector.helpers import mqtt_fixture`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import httpx
import paho.mqtt.client as paho
import pytest
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

from device_connector.connector import CONNECTOR, Connector
from shared.context import Context
from shared.settings import Settings
from tests.conftest import Users, bearer
from tests.device_manager import Device, Person, bind, person, provision, share, staff

DENIED = 0x80
# paho 2.x hands MQTT 3.1.1 CONNACK return codes to on_connect as MQTT 5 reason codes: map them back.
CONNACK_CODES = {
    "Success": 0,
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}
CHANNELS = ("commands", "replies", "state", "events", "desired")


def no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho does not set TCP_NODELAY; without it a request/response costs 40-90 ms (PERF §5)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:  # noqa: ASYNC109 - polls what has nothing to await; past it, answers the falsy result
    """Poll `check` (sync or async) until it returns something truthy, without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            return result
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Mqtt:
    """One MQTT 3.1.1 connection (paho, threaded), never reconnecting by itself."""

    def __init__(
        self,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        host: str = "127.0.0.1",
        clean_session: bool = True,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.client_id = client_id
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=clean_session,
            reconnect_on_failure=False,
        )
        self.client.on_socket_open = no_delay
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos=qos, retain=retain)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self._lock = threading.Lock()
        self.connack: int | None = None
        self.session_present: bool | None = None
        self.got_connack = threading.Event()
        self.disconnected = threading.Event()
        self.received: list[Received] = []
        self._subacks: dict[int, list[int]] = {}
        self._unsubacks: set[int] = set()
        self._started = False
        self._dropped = False

    # --- paho callbacks (in paho's thread) ---------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.connack = CONNACK_CODES.get(str(reason), -1)
        self.session_present = bool(getattr(flags, "session_present", False))
        self.got_connack.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.disconnected.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(Received(message.topic, bytes(message.payload), message.qos, bool(message.retain)))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: list[Any], props: Any = None) -> None:
        with self._lock:
            self._subacks[mid] = [int(code.value) for code in codes]

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any = None) -> None:
        with self._lock:
            self._unsubacks.add(mid)

    # --- what a test does --------------------------------------------------------------------------

    async def connect(self, timeout: float = 5.0) -> int | None:  # noqa: ASYNC109 - to eventually (paho's thread)
        """The CONNACK return code (0 accepted, 5 not authorized...), or None if the server sent none."""
        await asyncio.to_thread(self.client.connect, self.host, self.port, self.keepalive)
        self.client.loop_start()
        self._started = True
        await eventually(lambda: self.got_connack.is_set() or self.disconnected.is_set(), timeout)
        return self.connack

    @property
    def is_connected(self) -> bool:
        return self.connack == 0 and not self.disconnected.is_set()

    async def subscribe(self, *filters: str, qos: int = 1, timeout: float = 5.0) -> list[int]:  # noqa: ASYNC109 - to eventually
        """The SUBACK return codes, one per filter: the granted QoS, or 0x80 for a refusal."""
        result, mid = self.client.subscribe([(topic_filter, qos) for topic_filter in filters])
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None, result
        codes = await eventually(lambda: self._subacks.get(mid), timeout)
        assert codes is not None, f"no SUBACK for {filters} within {timeout} s"
        return list(codes)

    async def unsubscribe(self, *filters: str, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - to eventually
        result, mid = self.client.unsubscribe(list(filters))
        assert result == paho.MQTT_ERR_SUCCESS and mid is not None, result
        assert await eventually(lambda: mid in self._unsubacks, timeout), f"no UNSUBACK for {filters}"

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,  # noqa: ASYNC109 - to eventually
    ) -> None:
        """Publish and, at QoS 1, wait for the PUBACK (which in amqtt means accepted, not delivered)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            assert await eventually(info.is_published, timeout), f"no PUBACK for {topic}"

    def publish_nowait(self, topic: str, payload: bytes | str, qos: int = 1) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def messages(self, topic: str | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self.received if topic is None or m.topic == topic]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages(topic)]

    async def wait_for(self, topic: str, payload: bytes | None = None, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - to eventually
        """Wait until a message on `topic` (with that payload, if given) has arrived."""

        def seen() -> bool:
            return any(payload is None or p == payload for p in self.payloads(topic))

        return bool(await eventually(seen, timeout))

    async def wait_disconnected(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - to eventually
        return bool(await eventually(self.disconnected.is_set, timeout))

    async def drop(self) -> None:
        """Cut the connection without a DISCONNECT, as a network drop would (the will is due)."""
        sock = cast(socket.socket | None, self.client.socket())
        self._dropped = True
        await asyncio.to_thread(self.client.loop_stop)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    async def close(self) -> None:
        """A clean DISCONNECT (if still connected), then stop paho's thread."""
        if not self._started:
            return
        self._started = False
        if not self._dropped and not self.disconnected.is_set():
            with contextlib.suppress(Exception):
                self.client.disconnect()
            await eventually(self.disconnected.is_set, 2.0)
        await asyncio.to_thread(self.client.loop_stop)


class Clients:
    """Makes MQTT clients against the app's embedded broker and closes every one at the end of a test."""

    def __init__(self, settings: Settings) -> None:
        self.port = settings.mqtt_port
        self.host = settings.mqtt_host
        self.made: list[Mqtt] = []
        self.sockets: list[Raw] = []

    def new(self, client_id: str, username: str | None = None, password: str | None = None, **kwargs: Any) -> Mqtt:
        client = Mqtt(self.port, client_id, username, password, host=self.host, **kwargs)
        self.made.append(client)
        return client

    async def connect(
        self, client_id: str, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Mqtt:
        """A connection that must be accepted."""
        client = self.new(client_id, username, password, **kwargs)
        code = await client.connect()
        assert code == 0, f"CONNECT of {client_id!r} answered {code}"
        return client

    async def attempt(
        self, client_id: str, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> int | None:
        """One CONNECT; its return code. The connection is closed again whatever the answer."""
        client = self.new(client_id, username, password, **kwargs)
        code = await client.connect()
        await client.close()
        return code

    def raw(self) -> Raw:
        """A plain TCP connection to the broker, for bytes paho will not send."""
        conn = Raw(self.host, self.port)
        self.sockets.append(conn)
        return conn

    async def close_all(self) -> None:
        for client in self.made:
            await client.close()
        for conn in self.sockets:
            conn.close()


@pytest.fixture(name="mqtt")
async def mqtt_fixture(app: FastAPI, settings: Settings) -> AsyncIterator[Clients]:
    clients = Clients(settings)
    try:
        yield clients
    finally:
        await clients.close_all()


# --- raw MQTT, for what paho will not send -------------------------------------------------------


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def connect_body(
    client_id: bytes, username: bytes | None = None, password: bytes | None = None, keep_alive: int = 60
) -> bytes:
    """A CONNECT's variable header and payload (MQTT 3.1.1, clean session, keep-alive 60 s by default)."""
    flags = 0x02  # clean session
    payload = mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += mqtt_string(password)
    return mqtt_string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keep_alive) + payload


def connect_packet(
    client_id: bytes, username: bytes | None = None, password: bytes | None = None, keep_alive: int = 60
) -> bytes:
    body = connect_body(client_id, username, password, keep_alive)
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int = 0, packet_id: int = 1) -> bytes:
    body = mqtt_string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


class Raw:
    """A plain TCP connection to the broker; its socket calls run in a thread."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send(self, data: bytes) -> bool:
        """False if the server had already closed the connection."""
        try:
            await asyncio.to_thread(self.sock.sendall, data)
            return True
        except OSError:
            return False

    async def recv(self, n: int = 4096, timeout: float = 5.0) -> bytes | None:  # noqa: ASYNC109 - the socket's: a recv in a thread is past asyncio.timeout's reach
        """Bytes, b"" once the server closed, or None if nothing came within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return await asyncio.to_thread(self.sock.recv, n)
        except TimeoutError:
            return None
        except OSError:
            return b""

    async def closed_by_server(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - bounds recvs in a thread (see recv)
        """Read until the server closes the connection (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = await self.recv(65536, timeout=min(left, 1.0))
            if data == b"":
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- a world of users and devices, built through the HTTP API -------------------------------------


@dataclass
class World:
    admin: Person
    owner: Person
    controller: Person
    viewer: Person
    stranger: Person
    device: Device
    device_token: str

    @property
    def uid(self) -> str:
        return self.device.uid


async def user_id(client: httpx.AsyncClient, tokens: dict[str, Any]) -> str:
    me = await client.get("/v1/users/me", headers=bearer(tokens))
    assert me.status_code == 200, me.text
    found: str = me.json()["id"]
    return found


async def get_device_token(client: httpx.AsyncClient, device: Device) -> str:
    response = await client.post("/v1/devices/token", json={"uid": device.uid, "secret": device.secret})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def owned_device(client: httpx.AsyncClient, admin: Person, owner: Person) -> Device:
    (device,) = await provision(client, admin)
    response = await bind(client, owner, device.uid, device.claim_code)
    assert response.status_code == 201, response.text
    return device


async def make_world(client: httpx.AsyncClient, users: Users, ctx: Context) -> World:
    """An admin; a device bound to `owner` and shared with `controller` and `viewer`; a `stranger`."""
    admin = await staff(users, ctx)
    owner, controller, viewer, stranger = [await person(users) for _ in range(4)]
    device = await owned_device(client, admin, owner)
    for sharee, role in ((controller, "controller"), (viewer, "viewer")):
        response = await share(client, owner, device.uid, sharee, role)
        assert response.status_code == 201, response.text
    return World(admin, owner, controller, viewer, stranger, device, await get_device_token(client, device))


async def events(
    client: httpx.AsyncClient, reader: Person, *, at_least: int = 0, **params: Any
) -> list[dict[str, Any]]:
    """The events matching `params`; with `at_least`, once that many are written (the connector's
    journal writes MQTT events in batches, a moment after they happen), or what there is after 5 s."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        response = await client.get("/v1/admin/events", params={"limit": 500, **params}, headers=reader.headers)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        if len(found) >= at_least or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


# --- the synchronous SDK against the in-process app ------------------------------------------------


class LoopTransport(httpx.BaseTransport):
    """Lets a synchronous httpx.Client (the SDK's) call the in-process app: each request runs on the
    test's event loop through the ASGI client, while the caller waits in its own thread. Only for
    callers that run in a worker thread (asyncio.to_thread), never on the loop itself."""

    def __init__(self, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()

        async def send() -> tuple[int, list[tuple[str, str]], bytes]:
            response = await self.client.request(
                request.method, str(request.url), headers=dict(request.headers), content=content
            )
            return response.status_code, list(response.headers.multi_items()), response.content

        status, headers, body = asyncio.run_coroutine_threadsafe(send(), self.loop).result(30)
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "transfer-encoding")]
        return httpx.Response(status, headers=headers, content=body, request=request)


def sync_http(client: httpx.AsyncClient) -> httpx.Client:
    return httpx.Client(transport=LoopTransport(client, asyncio.get_running_loop()), base_url="http://testserver")


__all__ = [
    "CHANNELS",
    "DENIED",
    "Clients",
    "Mqtt",
    "Raw",
    "Received",
    "World",
    "connect_body",
    "connect_packet",
    "events",
    "eventually",
    "get_device_token",
    "make_world",
    "mqtt_fixture",
    "owned_device",
    "publish_packet",
    "sync_http",
    "user_id",
]


def running_connector(ctx: Context) -> Connector:
    """The app's device connector, which its lifespan started."""
    found = ctx.services.find(CONNECTOR)
    assert found is not None, "the device connector is not running"
    return found
