"""Attacks from outside that broke the connector (issue 17), each on both backends: a state nested too
deep for anything to write back (it made every read of it a 500 and every restart fail), a will that
outlived the role that allowed it, retained commands that replayed to the device on every subscribe,
and NUL characters in MQTT strings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from device_connector import store
from device_connector.broker.embedded import EmbeddedBroker
from device_connector.connector import Connector
from shared.context import Context
from shared.jsonlimits import MAX_DEPTH
from tests.conftest import Users
from tests.device_connector.helpers import (  # noqa: F401  (mqtt_fixture is the `mqtt` fixture)
    Clients,
    connect_packet,
    events,
    eventually,
    make_world,
    mqtt_fixture,
    running_connector,
)

QUIET = 1.0  # s to wait for something that must not arrive


def nested(depth: int) -> Any:
    value: Any = {"leaf": True}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def connector(ctx: Context) -> Connector:
    found: Connector = running_connector(ctx)
    return found


def broker(ctx: Context) -> EmbeddedBroker:
    found = connector(ctx).broker
    assert isinstance(found, EmbeddedBroker)
    return found


async def stored_reported(ctx: Context, uid: str) -> Any:
    async with ctx.db.read() as tx:
        row = await store.get_state(tx, uid=uid)
    return row.reported if row is not None else None


async def test_a_state_nested_too_deep_is_dropped_and_recorded(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner = world.uid, world.owner
    topic = f"devices/{uid}/state"
    device = await mqtt.connect(uid, uid, world.device_token)
    watcher = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    assert await watcher.subscribe(topic) == [1]

    deep = json.dumps(nested(300)).encode()
    await device.publish(topic, deep, retain=True)
    await device.publish(topic, b'{"ok": 1}', retain=True)  # what comes after still flows
    assert await watcher.wait_for(topic, b'{"ok": 1}')
    assert deep not in watcher.payloads(topic), "a state nested 300 levels reached a subscriber"
    assert await eventually(lambda: stored_reported(ctx, uid)) == {"ok": 1}

    async def refusals() -> list[dict[str, Any]]:
        return [
            e for e in await events(client, world.admin, type="acl_denied", device_uid=uid) if e["detail"].get("reason")
        ]

    found = await eventually(refusals)
    assert found and f"deeper than {MAX_DEPTH}" in found[0]["detail"]["reason"], found
    response = await client.get(f"/v1/devices/{uid}/state", headers=owner.headers)
    assert response.status_code == 200, response.text
    assert response.json()["reported"] == {"ok": 1}


async def test_a_state_at_the_bound_is_kept(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    device = await mqtt.connect(world.uid, world.uid, world.device_token)
    await device.publish(f"devices/{world.uid}/state", orjson.dumps(nested(MAX_DEPTH)), retain=True)
    assert await eventually(lambda: stored_reported(ctx, world.uid)) == nested(MAX_DEPTH)


async def test_a_deep_state_stored_before_the_bound_breaks_neither_reads_nor_a_restart(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    """What an earlier version let in: start-up retains everything else, the read answers without it."""
    world = await make_world(client, users, ctx)
    uid = world.uid
    async with ctx.db.write() as tx:
        await store.put_reported_many(tx, [{"uid": uid, "reported": nested(300), "reported_at": datetime.now(UTC)}])
    response = await client.get(f"/v1/devices/{uid}/state", headers=world.owner.headers)
    assert response.status_code == 200, response.text
    assert response.json()["reported"] is None
    # What start-up does (the same code path as a restart's): it must not raise.
    await connector(ctx)._load_retained_state()
    assert broker(ctx).server.retained(f"devices/{uid}/state") is None


async def test_deep_or_nul_bodies_are_refused_and_change_nothing(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner = world.uid, world.owner
    for body in (nested(300), {"name": "a\x00b"}):
        response = await client.put(f"/v1/devices/{uid}/state/desired", json=body, headers=owner.headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
    response = await client.get(f"/v1/devices/{uid}/state", headers=owner.headers)
    assert response.json()["desired"] is None, "a refused desired state was stored"
    command = {"action": "unlock", "params": nested(300)}
    response = await client.post(f"/v1/devices/{uid}/commands", json=command, headers=owner.headers)
    assert response.status_code == 400, response.text


async def test_a_will_is_authorized_when_it_is_published(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner, controller = world.uid, world.owner, world.controller
    commands = f"devices/{uid}/commands"
    device = await mqtt.connect(uid, uid, world.device_token)
    assert await device.subscribe(commands) == [1]
    will = (commands, json.dumps({"id": "w", "action": "unlock"}).encode(), 1, False)
    sharee = await mqtt.connect(controller.id, controller.id, controller.tokens["access_token"], will=will)

    response = await client.delete(f"/v1/devices/{uid}/shares/{controller.id}", headers=owner.headers)
    assert response.status_code == 204, response.text
    records = broker(ctx).server.records
    assert await eventually(lambda: uid not in records[controller.id].grants.roles), "grants never narrowed"
    await sharee.drop()  # an unexpected close: the will is due
    assert not await device.wait_for(commands, timeout=QUIET), "the device got a will its sender lost the role for"

    async def denied() -> list[dict[str, Any]]:
        found = await events(client, world.admin, type="acl_denied", device_uid=uid)
        return [e for e in found if e["actor_id"] == controller.id]

    assert await eventually(denied), "the refused will left no acl_denied event"


async def test_a_will_of_a_client_that_keeps_its_role_is_still_published(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, controller = world.uid, world.controller
    commands = f"devices/{uid}/commands"
    device = await mqtt.connect(uid, uid, world.device_token)
    assert await device.subscribe(commands) == [1]
    will = (commands, b'{"id":"w","action":"lock"}', 1, False)
    sharee = await mqtt.connect(controller.id, controller.id, controller.tokens["access_token"], will=will)
    await sharee.drop()
    assert await device.wait_for(commands, b'{"id":"w","action":"lock"}')


async def test_commands_are_never_retained(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner, controller = world.uid, world.owner, world.controller
    commands = f"devices/{uid}/commands"
    sender = await mqtt.connect(controller.id, controller.id, controller.tokens["access_token"])
    await sender.publish(commands, b'{"id":"r","action":"unlock"}', retain=True)
    will = (commands, b'{"id":"rw","action":"unlock"}', 1, True)
    dropping = await mqtt.connect(f"{owner.id}-w", owner.id, owner.tokens["access_token"], will=will)
    await dropping.drop()
    device = await mqtt.connect(uid, uid, world.device_token)
    assert await device.subscribe(commands) == [1]
    assert not await device.wait_for(commands, timeout=QUIET), device.payloads(commands)
    assert broker(ctx).server.retained(commands) is None
    # A retained state is still retained.
    await device.publish(f"devices/{uid}/state", b'{"on": true}', retain=True)
    assert await eventually(lambda: broker(ctx).server.retained(f"devices/{uid}/state") == b'{"on": true}')


async def test_a_nul_in_an_mqtt_string_closes_the_connection(ctx: Context, mqtt: Clients) -> None:
    raw = mqtt.raw()
    assert await raw.send(connect_packet(b"abc\x00def", b"user\x00", b"password"))
    # Closed unanswered (MQTT-1.5.3-2), not refused with a CONNACK as if the strings were fine.
    assert await raw.recv(timeout=5.0) == b"", "a CONNECT with NUL in its strings was answered"
