"""Bad input on the MQTT port never takes the broker down (SPEC §6 limits, §11 "bad input"): random
bytes, an HTTP request, a CONNECT over the packet limit, a first packet that is not a CONNECT, an
oversized PUBLISH and invalid UTF-8 in topics end in a closed connection; payloads that are not UTF-8
are opaque to MQTT and delivered as they are. After each, a normal client connects and round-trips a
message. And no message is lost inside the broker (SPEC §6, PERF §5): 2,000 numbered QoS 1 messages all
arrive while other clients subscribe, unsubscribe and disconnect around them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.context import Context
from tests.conftest import Users
from tests.device_connector.helpers import (  # noqa: F401  (mqtt_fixture is the `mqtt` fixture)
    Clients,
    Mqtt,
    World,
    connect_body,
    connect_packet,
    events,
    eventually,
    make_world,
    mqtt_fixture,
    publish_packet,
    remaining_length,
)

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
CONNECT_WINDOW = 12.0  # SPEC §6: a CONNECT within 10 s of the TCP connection; and a margin
HTTP_REQUEST = (
    b"GET /v1/devices HTTP/1.1\r\nHost: 127.0.0.1:1883\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\nAuthorization: Bearer x\r\n\r\n"
)


@pytest.fixture
def no_crash(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing logged at ERROR while the test runs: no traceback, no task dying unseen."""
    caplog.set_level(logging.WARNING)
    yield
    crashes = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not crashes, [r.getMessage() for r in crashes]


async def round_trip(mqtt: Clients, world: World, tag: str) -> None:
    """A normal device and a normal user still connect, subscribe and exchange a message."""
    uid, owner = world.uid, world.owner
    watcher = await mqtt.connect(f"{owner.id}-{tag}", owner.id, owner.tokens["access_token"])
    assert await watcher.subscribe(f"devices/{uid}/events") == [1]
    device = await mqtt.connect(uid, uid, world.device_token)
    payload = f"alive-{tag}".encode()
    await device.publish(f"devices/{uid}/events", payload)
    assert await watcher.wait_for(f"devices/{uid}/events", payload), f"no round trip after {tag}"
    await device.close()
    await watcher.close()


async def test_random_bytes_and_http_never_kill_the_broker(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, no_crash: None
) -> None:
    world = await make_world(client, users, ctx)
    junk = [
        random.Random(6).randbytes(4096),
        os.urandom(4096),
        HTTP_REQUEST,
        b"\x00" * 64,
        b"\xff" * 64,
        b"\x10\xff\xff\xff\xff\xff",  # a remaining length of more than 4 bytes
        connect_packet(b"\xff\xfe\xfd"),  # a client id that is not UTF-8
        connect_packet(world.uid.encode(), b"\xc3\x28", world.device_token.encode()),  # nor a username
    ]
    closing = []
    for data in junk:
        conn = mqtt.raw()
        await conn.send(data)
        closing.append(asyncio.ensure_future(conn.closed_by_server(timeout=CONNECT_WINDOW)))
    await round_trip(mqtt, world, "junk")
    closed = await asyncio.gather(*closing)
    assert all(closed), [data[:24] for data, done in zip(junk, closed, strict=True) if not done]
    await round_trip(mqtt, world, "closed")


async def test_a_connect_over_the_packet_limit_is_refused(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, no_crash: None
) -> None:
    world = await make_world(client, users, ctx)
    body = connect_body(world.uid.encode(), world.uid.encode(), world.device_token.encode())
    # A valid CONNECT body with valid credentials, in a packet that announces more than 256 KiB.
    for announced in (256 * 1024 + 1, 1_000_000, 268_435_455):
        conn = mqtt.raw()
        await conn.send(b"\x10" + remaining_length(announced) + body)
        answer = await conn.recv(4)
        assert answer != CONNACK_ACCEPTED, f"a CONNECT of {announced} bytes was accepted"
        assert await conn.closed_by_server(), f"a CONNECT of {announced} bytes kept the connection open"
    await round_trip(mqtt, world, "huge")


async def test_a_first_packet_that_is_not_a_connect_is_refused(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, no_crash: None
) -> None:
    world = await make_world(client, users, ctx)
    body = connect_body(world.uid.encode(), world.uid.encode(), world.device_token.encode())
    # MQTT-3.1.0-1: the first packet is a CONNECT; a reserved, PUBLISH, SUBSCRIBE or DISCONNECT type
    # carrying a CONNECT's body is not one.
    for first in (0x00, 0x30, 0x82, 0xE0, 0xF0):
        conn = mqtt.raw()
        await conn.send(bytes([first]) + remaining_length(len(body)) + body)
        answer = await conn.recv(4)
        assert answer != CONNACK_ACCEPTED, f"a packet of type {first >> 4} was taken for a CONNECT"
        assert await conn.closed_by_server(), f"a first packet of type {first >> 4} kept the connection open"
    await round_trip(mqtt, world, "first")


async def test_a_topic_that_is_not_utf8_closes_the_connection(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, no_crash: None
) -> None:
    world = await make_world(client, users, ctx)
    uid = world.uid
    for topic in (f"devices/{uid}/ev".encode() + b"\xff\xfeents", b"devices/\xed\xa0\x80/state", b"\xc0\xaf"):
        conn = mqtt.raw()
        await conn.send(connect_packet(uid.encode(), uid.encode(), world.device_token.encode()))
        assert await conn.recv(4) == CONNACK_ACCEPTED
        await conn.send(publish_packet(topic, b'{"x":1}', qos=1))
        # MQTT-1.5.3-1 and SPEC §11: a closed connection.
        assert await conn.closed_by_server(), f"{topic!r} kept the connection open"
    await round_trip(mqtt, world, "topic")


async def test_payloads_that_are_not_utf8_are_opaque(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, no_crash: None
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner = world.uid, world.owner
    watcher = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    assert await watcher.subscribe(f"devices/{uid}/#") == [1]
    device = await mqtt.connect(uid, uid, world.device_token)
    binary = b"\xff\xfe\x00\x80garbage\xc3\x28"
    for channel in ("events", "state", "replies"):
        await device.publish(f"devices/{uid}/{channel}", binary)
    for channel in ("events", "state", "replies"):
        assert await watcher.wait_for(f"devices/{uid}/{channel}", binary), channel
    # The connector's state and reply handling shrug them off.
    state = await client.get(f"/v1/devices/{uid}/state", headers=owner.headers)
    assert state.status_code == 200, state.text
    assert state.json()["reported"] is None
    assert device.is_connected
    await device.close()
    await round_trip(mqtt, world, "payload")


async def test_a_publish_over_256_kib_disconnects_the_client(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, no_crash: None
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner = world.uid, world.owner
    watcher = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    assert await watcher.subscribe(f"devices/{uid}/events") == [1]
    device = await mqtt.connect(uid, uid, world.device_token)
    # Under the limit: delivered.
    big = os.urandom(200 * 1024)
    await device.publish(f"devices/{uid}/events", big)
    assert await watcher.wait_for(f"devices/{uid}/events", big), "a 200 KiB message was not delivered"
    # Over it: the client is disconnected with the reason protocol_error; nothing is delivered.
    too_big = os.urandom(300 * 1024)
    device.publish_nowait(f"devices/{uid}/events", too_big)
    assert await device.wait_disconnected(), "a PUBLISH over 256 KiB kept the connection open"

    async def reasons() -> list[object]:
        found = await events(client, world.admin, type="device_disconnected", device_uid=uid)
        return [e["detail"].get("reason") for e in found]

    async def closed_for_protocol_error() -> bool:
        return "protocol_error" in await reasons()

    assert await eventually(closed_for_protocol_error), await reasons()
    assert too_big not in watcher.payloads(f"devices/{uid}/events")
    await round_trip(mqtt, world, "big")


async def test_no_message_is_lost_while_others_come_and_go(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner, churner = world.uid, world.owner, world.viewer
    topic = f"devices/{uid}/events"
    subscriber = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    assert await subscriber.subscribe(topic) == [1]
    device = await mqtt.connect(uid, uid, world.device_token)

    stop = asyncio.Event()
    rounds = [0]

    async def churn(n: int) -> None:
        # Another user with a share subscribes, unsubscribes and disconnects in a loop.
        while not stop.is_set():
            conn = Mqtt(mqtt.port, f"{churner.id}-churn{n}", churner.id, churner.tokens["access_token"], host=mqtt.host)
            try:
                assert await conn.connect() == 0
                await conn.subscribe(topic, f"devices/{uid}/#", f"devices/{uid}/state")
                await conn.unsubscribe(f"devices/{uid}/#")
                await conn.subscribe(f"devices/{uid}/+")
                if rounds[0] % 2:
                    await conn.drop()  # an unexpected close now and then
            finally:
                await conn.close()
            rounds[0] += 1

    churners = [asyncio.ensure_future(churn(n)) for n in range(3)]
    total = 2000
    started = time.monotonic()
    try:
        for i in range(total):
            device.publish_nowait(topic, json.dumps({"n": i}))
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the churners and the broker run

        def all_arrived() -> bool:
            return len({json.loads(p)["n"] for p in subscriber.payloads(topic)}) >= total

        await eventually(all_arrived, timeout=60, interval=0.1)
    finally:
        stop.set()
        for task in churners:
            with contextlib.suppress(Exception):
                await task
    numbers = {json.loads(p)["n"] for p in subscriber.payloads(topic)}
    missing = sorted(set(range(total)) - numbers)
    assert not missing, f"{len(missing)} lost, first {missing[:10]} (in {time.monotonic() - started:.1f} s)"
    assert rounds[0] >= 3, "the churners never ran"
    for task in churners:
        assert task.exception() is None, task.exception()
