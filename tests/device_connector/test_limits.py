"""Per-client limits (SPEC §6): a subscriber that stops reading is disconnected once its window of
outstanding deliveries is full (protocol_error); the broker and every other client go on."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import httpx
import pytest

from shared.context import Context
from tests.conftest import Users
from tests.device_connector.helpers import (
    Clients,
    connect_packet,
    eventually,
    make_world,
    mqtt_fixture,
    mqtt_string,
    remaining_length,
    running_connector,
)

__all__ = ["mqtt_fixture"]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"mqtt_max_inflight": 200}


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
