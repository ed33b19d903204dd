"""Per-client limits (SPEC §6): a subscriber that stops reading is disconnected once its window of
outstanding deliveries is full (protocol_error); the broker and every other client go on. A client
silent for one and a half keep-alive periods is disconnected (MQTT-3.1.2-24), and so is one whose packet
stops halfway; one that pings is not."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import httpx
import pytest

from device_connector.broker.embedded import EmbeddedBroker
from shared.context import Context
from tests.conftest import Users
from tests.device_connector.helpers import (
    Clients,
    Raw,
    connect_packet,
    eventually,
    make_world,
    mqtt_fixture,
    mqtt_string,
    publish_packet,
    remaining_length,
    running_connector,
)

__all__ = ["mqtt_fixture"]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"mqtt_max_inflight": 200}


async def connected_raw(mqtt: Clients, client_id: str, token: str, keep_alive: int) -> Raw:
    """A plain TCP connection that sent a CONNECT with this keep-alive and got CONNACK 0."""
    conn = mqtt.raw()
    assert await conn.send(connect_packet(client_id.encode(), client_id.encode(), token.encode(), keep_alive))
    assert await conn.recv(4) == b"\x20\x02\x00\x00"
    return conn


def subscribe_packet(topic: bytes, packet_id: int = 1, qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + mqtt_string(topic) + bytes([qos])
    return b"\x82" + remaining_length(len(body)) + body


async def test_a_subscriber_that_stops_reading_is_disconnected_and_others_go_on(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    events = f"devices/{world.uid}/events"
    stalled = mqtt.raw()
    owner = world.owner
    assert await stalled.send(
        connect_packet(owner.id.encode(), owner.id.encode(), owner.tokens["access_token"].encode())
    )
    connack = await stalled.recv(4)
    assert connack is not None and connack[:2] == b"\x20\x02"  # CONNACK
    assert await stalled.send(subscribe_packet(events.encode()))
    suback = await stalled.recv(5)
    assert suback is not None and suback[:1] == b"\x90"  # SUBACK; from now on it reads nothing
    viewer = await mqtt.connect(world.viewer.id, world.viewer.id, world.viewer.tokens["access_token"])
    assert await viewer.subscribe(events) == [1]
    device = await mqtt.connect(world.uid, world.uid, world.device_token)
    broker = running_connector(ctx).broker
    payload = b"x" * 16_384
    for _ in range(1500):  # ~24 MB: far more than the socket buffers hold
        device.publish_nowait(events, payload, qos=0)
        await asyncio.sleep(0.004)  # paced, so a subscriber that does read keeps up
        if not broker.is_online(owner.id):
            break
    assert await eventually(lambda: not broker.is_online(owner.id), timeout=10)
    # Everyone else goes on: the reading subscriber kept its connection.
    assert broker.is_online(world.viewer.id)
    await device.publish(events, b"still here")
    assert await viewer.wait_for(events, b"still here", timeout=10)
    assert broker.is_online(world.uid)


async def test_a_client_silent_for_one_and_a_half_keep_alives_is_disconnected_and_a_pinging_one_is_not(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    broker = running_connector(ctx).broker
    silent = await connected_raw(mqtt, world.owner.id, world.owner.tokens["access_token"], keep_alive=1)
    pinging = await connected_raw(mqtt, world.viewer.id, world.viewer.tokens["access_token"], keep_alive=1)
    connected = time.monotonic()
    while time.monotonic() - connected < 4:  # the one pings twice a keep-alive; the other says nothing
        assert await pinging.send(b"\xc0\x00")  # PINGREQ
        assert await pinging.recv(2) == b"\xd0\x00"  # PINGRESP
        await asyncio.sleep(0.5)
    assert await silent.closed_by_server(timeout=5)
    assert not broker.is_online(world.owner.id)
    assert broker.is_online(world.viewer.id)
    assert await pinging.send(b"\xc0\x00")
    assert await pinging.recv(2) == b"\xd0\x00"


async def test_a_packet_whose_body_stops_coming_is_bounded_by_the_keep_alive_too(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    stalled = await connected_raw(mqtt, world.uid, world.device_token, keep_alive=1)
    assert await stalled.send(b"\x30" + remaining_length(100) + b"\x00\x05dev")  # 100 bytes announced, 7 sent
    assert await stalled.closed_by_server(timeout=6)
    broker = running_connector(ctx).broker
    assert await eventually(lambda: not broker.is_online(world.uid), timeout=5)


async def test_a_large_packet_after_a_quiet_spell_gets_a_keep_alive_period_of_its_own(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    slow = await connected_raw(mqtt, world.uid, world.device_token, keep_alive=2)  # a 3-s bound
    packet = publish_packet(f"devices/{world.uid}/events".encode(), b"x" * 200)
    await asyncio.sleep(2.0)  # quiet for most of the bound
    for start in range(0, len(packet), len(packet) // 4):  # then the packet over 2 s: 4 s after the quiet began
        assert await slow.send(packet[start : start + len(packet) // 4])
        await asyncio.sleep(0.5)
    assert await slow.send(b"\xc0\x00")  # PINGREQ
    assert await slow.recv(2) == b"\xd0\x00"  # PINGRESP: still connected
    assert running_connector(ctx).broker.is_online(world.uid)


async def test_a_device_closed_while_it_reads_nothing_is_dropped_not_held_open(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    # The broker closes a device whose window of deliveries is full, and the device goes on reading
    # nothing with its socket open: its close must not wait for the buffers to drain.
    world = await make_world(client, users, ctx)
    commands = f"devices/{world.uid}/commands"
    stalled = await connected_raw(mqtt, world.uid, world.device_token, keep_alive=60)
    assert await stalled.send(subscribe_packet(commands.encode()))
    suback = await stalled.recv(5)
    assert suback is not None and suback[:1] == b"\x90"  # SUBACK; from now on it reads nothing
    broker = running_connector(ctx).broker
    assert isinstance(broker, EmbeddedBroker)
    payload = b"x" * 131_072
    handler = broker.server._sessions[world.uid][1]
    for _ in range(400):  # ~50 MB if it came to that: far more than the socket buffers hold
        await broker.publish(commands, payload)
        if not broker.is_online(world.uid):
            break
        await asyncio.sleep(0)
    assert await eventually(lambda: not broker.is_online(world.uid), timeout=10)

    async def offline() -> bool:
        response = await client.get(f"/v1/devices/{world.uid}", headers=world.owner.headers)
        return response.status_code == 200 and response.json()["online"] is False

    assert await eventually(offline, timeout=5)
    assert broker.server.records.get(world.uid) is None
    # Its connection is dropped too (CLOSE_GRACE), not held open until the client reads: the reader's
    # task, which ends with the close, ends while the client still reads nothing.
    assert await eventually(lambda: handler._reader_task.done(), timeout=5)
