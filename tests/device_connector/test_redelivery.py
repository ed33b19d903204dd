"""A QoS 1 delivery whose PUBACK is late is sent again, flagged DUP, not dropped (SPEC §6: no message
accepted from a publisher is lost; MQTT 3.1.1 §4.4). The subscriber is a raw socket, so it can hold
its PUBACK back as long as it likes."""

from __future__ import annotations

import struct

import httpx

from shared.context import Context
from tests.conftest import Users
from tests.device_connector.helpers import (
    Clients,
    Raw,
    connect_packet,
    make_world,
    mqtt_fixture,
    mqtt_string,
    remaining_length,
)

__all__ = ["mqtt_fixture"]
PUBLISH, PUBACK, SUBACK, CONNACK = 3, 4, 9, 2


class Packets:
    """Whole MQTT packets from a raw socket: (type, flags, body)."""

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.buffer = b""

    async def next(self, timeout: float) -> tuple[int, int, bytes] | None:  # noqa: ASYNC109 - to Raw.recv's socket
        while True:
            found = self._take()
            if found is not None:
                return found
            data = await self.raw.recv(65536, timeout=timeout)
            if not data:
                return None
            self.buffer += data

    def _take(self) -> tuple[int, int, bytes] | None:
        if len(self.buffer) < 2:
            return None
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(self.buffer):
                return None
            byte = self.buffer[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
        if len(self.buffer) < i + length:
            return None
        first, body = self.buffer[0], self.buffer[i : i + length]
        self.buffer = self.buffer[i + length :]
        return first >> 4, first & 0x0F, body


def subscribe_packet(topic: str, packet_id: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + mqtt_string(topic.encode()) + b"\x01"
    return b"\x82" + remaining_length(len(body)) + body


def parse_publish(flags: int, body: bytes) -> tuple[bool, int, bytes, bytes]:
    """(dup, packet id, topic, payload) of a QoS 1 PUBLISH."""
    (topic_length,) = struct.unpack("!H", body[:2])
    topic = body[2 : 2 + topic_length]
    (packet_id,) = struct.unpack("!H", body[2 + topic_length : 4 + topic_length])
    return bool(flags & 0x08), packet_id, topic, body[4 + topic_length :]


async def test_a_late_puback_gets_the_message_sent_again(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner = world.uid, world.owner
    topic = f"devices/{uid}/state"
    device = await mqtt.connect(uid, uid, world.device_token)
    raw = mqtt.raw()
    packets = Packets(raw)
    token = owner.tokens["access_token"].encode()
    assert await raw.send(connect_packet(owner.id.encode(), owner.id.encode(), token))
    connack = await packets.next(5)
    assert connack is not None and connack[:2] == (CONNACK, 0)
    assert await raw.send(subscribe_packet(topic))
    kind, _, body = await packets.next(5) or (0, 0, b"")
    assert kind == SUBACK and body[-1] == 1, body

    await device.publish(topic, b"hold my ack")
    first = await packets.next(5)
    assert first is not None and first[0] == PUBLISH and (first[1] >> 1) & 3 == 1, first
    dup, packet_id, got_topic, payload = parse_publish(first[1], first[2])
    assert (dup, got_topic, payload) == (False, topic.encode(), b"hold my ack")

    # No PUBACK: amqtt alone gave up after 5 s and dropped the message. It comes again, flagged DUP.
    again = await packets.next(12)
    assert again is not None and again[0] == PUBLISH, again
    assert parse_publish(again[1], again[2]) == (True, packet_id, topic.encode(), b"hold my ack")

    assert await raw.send(b"\x40\x02" + struct.pack("!H", packet_id))  # acknowledged at last
    await device.publish(topic, b"next")
    following = await packets.next(5)
    assert following is not None and parse_publish(following[1], following[2])[2:] == (topic.encode(), b"next")
    _, next_id, _, _ = parse_publish(following[1], following[2])
    assert await raw.send(b"\x40\x02" + struct.pack("!H", next_id))
    assert await packets.next(7) is None, "an acknowledged message was sent again"
