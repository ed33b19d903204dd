"""CONNECT authentication of the embedded broker (SPEC §6, SECURITY "amqtt touches sessions before it
authenticates"): bad, expired, revoked and wrong-kind tokens and client ids that break the rules get
CONNACK 5; a refused CONNECT never disconnects, wipes, resumes or alters the session of the client id
it names, and its will is never stored; each refusal is an `mqtt_auth_failed` event."""

from __future__ import annotations

import asyncio
import select
import socket
import sys
import time
from typing import Any

import httpx
import jwt
import pytest

from device_connector.broker import server as broker_server
from device_connector.broker.embedded import EmbeddedBroker
from shared.context import Context
from shared.settings import Settings
from shared.testing import forge
from tests.conftest import Users, bearer
from tests.device_connector.helpers import (  # noqa: F401  (mqtt_fixture is the `mqtt` fixture)
    Clients,
    events,
    eventually,
    get_device_token,
    make_world,
    mqtt_fixture,
    owned_device,
    running_connector,
)
from tests.device_manager import person, provision, staff

REFUSED = 5


def expired(settings: Settings, token: str, typ: str) -> str:
    """The same token, re-signed with the deployment's key, expired two minutes ago (leeway ≤ 30 s)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 600, exp=now - 120, jti=f"expired-{now}-{claims['jti']}")
    return forge(settings.keys_dir, claims=claims, typ=typ, issuer=settings.issuer, audience=settings.audience)


def with_typ(settings: Settings, token: str, typ: str) -> str:
    """The same claims, valid in time, under another token kind's `typ`."""
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now, exp=now + 300, jti=f"retyped-{now}-{claims['jti']}")
    return forge(settings.keys_dir, claims=claims, typ=typ, issuer=settings.issuer, audience=settings.audience)


async def auth_failures(client: httpx.AsyncClient, admin: Any, at_least: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]]:
        found = await events(client, admin, type="mqtt_auth_failed")
        return found if len(found) >= at_least else []

    found: list[dict[str, Any]] = await eventually(enough)
    return found or await events(client, admin, type="mqtt_auth_failed")


async def test_bad_tokens_are_refused(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings, mqtt: Clients
) -> None:
    admin = await staff(users, ctx)
    user = await person(users)
    device, other_device = await provision(client, admin, count=2)
    device_token = await get_device_token(client, device)
    other_token = await get_device_token(client, other_device)
    uid, me = device.uid, user.id

    # A second session of the same user, logged out: its access token is revoked.
    revoked = await users.login(user.username)
    assert (await client.post("/v1/auth/logout", headers=bearer(revoked))).status_code == 204
    exchanged = await client.post("/v1/auth/exchange", json={"audience": "partner.example"}, headers=user.headers)
    assert exchanged.status_code == 200, exchanged.text
    access = user.tokens["access_token"]

    # The genuine credentials work: every refusal below is down to the one thing changed.
    assert await mqtt.attempt(uid, uid, device_token) == 0
    assert await mqtt.attempt(me, me, access) == 0

    cases: dict[str, tuple[str, str, str | None]] = {
        "device: garbage": (uid, uid, "garbage"),
        "device: no password": (uid, uid, None),
        "device: empty password": (uid, uid, ""),
        "device: expired": (uid, uid, expired(settings, device_token, "device+jwt")),
        "device: a user token": (uid, uid, access),
        "device: its claims as a user token": (uid, uid, with_typ(settings, device_token, "at+jwt")),
        "device: another device's token": (uid, uid, other_token),
        "user: garbage": (me, me, "garbage"),
        "user: expired": (me, me, expired(settings, access, "at+jwt")),
        "user: revoked (logged out)": (me, me, revoked["access_token"]),
        "user: refresh token": (me, me, user.tokens["refresh_token"]),
        "user: exchanged token": (me, me, exchanged.json()["access_token"]),
        "user: a device token": (me, me, device_token),
        "user: its claims as a device token": (me, me, with_typ(settings, access, "device+jwt")),
    }
    answers = {name: await mqtt.attempt(*case) for name, case in cases.items()}
    assert answers == dict.fromkeys(cases, REFUSED)

    found = await auth_failures(client, admin, len(cases))
    assert len(found) == len(cases), found
    assert all(e["type"] == "mqtt_auth_failed" for e in found)
    # A refused device is on its own timeline; a refused user is not on any device's.
    device_cases = sum(name.startswith("device:") for name in cases)
    assert sorted(str(e["device_uid"]) for e in found) == sorted(
        [uid] * device_cases + ["None"] * (len(cases) - device_cases)
    )
    # The genuine credentials still work afterwards.
    assert await mqtt.attempt(uid, uid, device_token) == 0
    assert await mqtt.attempt(me, me, access) == 0


async def test_a_device_connects_only_under_its_uid(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    admin = await staff(users, ctx)
    device, other = await provision(client, admin, count=2)
    token = await get_device_token(client, device)
    uid = device.uid
    for client_id, username in [
        (other.uid, uid),  # another device's client id
        (other.uid, other.uid),  # another device altogether, with this device's token
        (uid, other.uid),
        (uid.lower(), uid),
        (uid + "-x", uid),
        ("", uid),
        ("anything", uid),
    ]:
        assert await mqtt.attempt(client_id, username, token) == REFUSED, (client_id, username)
    assert await mqtt.attempt(uid, uid, token) == 0


async def test_user_client_id_rules(client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients) -> None:
    admin = await staff(users, ctx)
    user, other = await person(users), await person(users)
    (device,) = await provision(client, admin)
    me, token = user.id, user.tokens["access_token"]
    assert "-" not in me  # SPEC §2: the client-id rule depends on it

    for client_id in [me, f"{me}-a", f"{me}-phone-1", f"{me}-{'x' * 40}", f"{me}--"]:
        assert await mqtt.attempt(client_id, me, token) == 0, client_id
    for client_id in [
        f"{me}-{'x' * 41}",
        f"{me}-",
        f"{me}x",
        f"x{me}",
        me.upper(),
        me[:-1],
        device.uid,
        other.id,
        f"{other.id}-app",
        "",
    ]:
        assert await mqtt.attempt(client_id, me, token) == REFUSED, client_id
    # Another user's id as username, with one's own token: refused whatever the client id.
    assert await mqtt.attempt(other.id, other.id, token) == REFUSED
    assert await mqtt.attempt(me, other.id, token) == REFUSED


async def test_a_refused_connect_does_not_disconnect_the_live_client(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner, stranger = world.uid, world.owner, world.stranger
    device = await mqtt.connect(uid, uid, world.device_token)
    assert await device.subscribe(f"devices/{uid}/commands") == [1]
    app_id = f"{owner.id}-app"
    app = await mqtt.connect(app_id, owner.id, owner.tokens["access_token"])
    assert await app.subscribe(f"devices/{uid}/state") == [1]

    stale = expired(settings, world.device_token, "device+jwt")
    attacks = [
        (uid, uid, "garbage"),
        (uid, uid, stale),
        (uid, stranger.id, stranger.tokens["access_token"]),
        (app_id, owner.id, "garbage"),
        (app_id, owner.id, expired(settings, owner.tokens["access_token"], "at+jwt")),
        (app_id, stranger.id, stranger.tokens["access_token"]),
        (app_id, uid, world.device_token),
    ]
    for attack in attacks:
        assert await mqtt.attempt(*attack) == REFUSED, attack[:2]
        # An attempt with a persistent session and a will changes nothing either.
        assert await mqtt.attempt(*attack, clean_session=False, will=(f"devices/{uid}/state", b"will", 1, False)) == 5

    # Both victims are still connected and still get their messages, both ways.
    assert device.is_connected and app.is_connected
    await app.publish(f"devices/{uid}/commands", b'{"id":"1","action":"ping","params":{}}')
    assert await device.wait_for(f"devices/{uid}/commands", b'{"id":"1","action":"ping","params":{}}')
    await device.publish(f"devices/{uid}/state", b'{"on":true}')
    assert await app.wait_for(f"devices/{uid}/state", b'{"on":true}')
    assert b"will" not in app.payloads(f"devices/{uid}/state")
    assert device.is_connected and app.is_connected
    assert await events(client, world.admin, type="device_disconnected", device_uid=uid) == []
    found = await auth_failures(client, world.admin, 2 * len(attacks))
    assert len(found) == 2 * len(attacks)


async def test_a_resumed_session_gets_each_retained_message_once(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    """MQTT 3.1.1 §3.3.1.3: a retained message goes to a resumed session once per topic, not once per
    subscription that matches it (here three overlapping filters of the owner)."""
    admin, owner = await staff(users, ctx), await person(users)
    device = await owned_device(client, admin, owner)
    uid, token = device.uid, await get_device_token(client, device)
    state, desired = f"devices/{uid}/state", f"devices/{uid}/desired"
    session_id = f"{owner.id}-retained"
    publisher = await mqtt.connect(uid, uid, token)
    await publisher.publish(state, b'{"on": true}', retain=True)

    persistent = await mqtt.connect(session_id, owner.id, owner.tokens["access_token"], clean_session=False)
    assert await persistent.subscribe(state, f"devices/{uid}/+", f"devices/{uid}/#") == [1, 1, 1]
    # One SUBSCRIBE of overlapping filters: the retained state once, too.
    assert await persistent.wait_for(state)
    await asyncio.sleep(0.3)
    assert persistent.payloads(state) == [b'{"on": true}']
    await persistent.close()

    resumed = mqtt.new(session_id, owner.id, owner.tokens["access_token"], clean_session=False)
    assert await resumed.connect() == 0
    assert resumed.session_present is True
    assert await resumed.wait_for(state)
    await asyncio.sleep(0.5)
    assert resumed.payloads(state) == [b'{"on": true}']
    assert resumed.payloads(desired) == []  # nothing retained there


async def test_a_refused_connect_leaves_a_persistent_session_alone(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    admin, owner, stranger = await staff(users, ctx), await person(users), await person(users)
    device = await owned_device(client, admin, owner)
    uid, token = device.uid, await get_device_token(client, device)
    events_topic = f"devices/{uid}/events"
    session_id = f"{owner.id}-persistent"

    persistent = await mqtt.connect(session_id, owner.id, owner.tokens["access_token"], clean_session=False)
    assert await persistent.subscribe(events_topic) == [1]
    await persistent.close()
    watcher = await mqtt.connect(f"{owner.id}-watch", owner.id, owner.tokens["access_token"])
    assert await watcher.subscribe(events_topic) == [1]
    publisher = await mqtt.connect(uid, uid, token)
    await publisher.publish(events_topic, b"e1")
    assert await watcher.wait_for(events_topic, b"e1")  # so e1 is queued for the offline session

    planted = (events_topic, b"planted", 1, False)
    attacks: list[tuple[str, str, str, dict[str, Any]]] = [
        (session_id, owner.id, "garbage", {"clean_session": True}),  # stock amqtt: deletes the session
        (session_id, owner.id, "garbage", {"clean_session": False, "will": planted}),  # stock: merges it
        (session_id, stranger.id, stranger.tokens["access_token"], {"clean_session": False, "will": planted}),
        (session_id, stranger.id, stranger.tokens["access_token"], {"clean_session": True}),
    ]
    for client_id, username, password, options in attacks:
        assert await mqtt.attempt(client_id, username, password, **options) == REFUSED, (username, options)
    await publisher.publish(events_topic, b"e2")
    assert await watcher.wait_for(events_topic, b"e2")

    resumed = mqtt.new(session_id, owner.id, owner.tokens["access_token"], clean_session=False)
    assert await resumed.connect() == 0
    assert resumed.session_present is True
    assert await eventually(lambda: {b"e1", b"e2"} <= set(resumed.payloads(events_topic)))
    # The subscription survived too: a live message arrives.
    await publisher.publish(events_topic, b"e3")
    assert await resumed.wait_for(events_topic, b"e3")

    # A will planted by a refused CONNECT would be published on an unexpected close: drop the line.
    await resumed.drop()
    broker = running_connector(ctx).broker
    assert await eventually(lambda: not broker.is_online(session_id))
    await publisher.publish(events_topic, b"after")
    assert await watcher.wait_for(events_topic, b"after")
    assert b"planted" not in watcher.payloads(events_topic)
    assert b"planted" not in resumed.payloads(events_topic)
    found = await auth_failures(client, admin, len(attacks))
    assert len(found) == len(attacks)


async def test_a_will_only_on_a_topic_the_client_may_publish_to(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, viewer = world.uid, world.viewer
    (other,) = await provision(client, world.admin)
    watcher = await mqtt.connect(world.owner.id, world.owner.id, world.owner.tokens["access_token"])
    assert await watcher.subscribe(f"devices/{uid}/#") == [1]
    device_sees = await mqtt.connect(uid, uid, world.device_token)
    assert await device_sees.subscribe(f"devices/{uid}/commands") == [1]

    # A will the client may not publish: the CONNECT is refused, or the will is never published.
    broker = running_connector(ctx).broker
    bad_wills = [
        (viewer.id, viewer.id, viewer.tokens["access_token"], f"devices/{uid}/commands"),  # a viewer commanding
        (viewer.id, viewer.id, viewer.tokens["access_token"], f"devices/{uid}/state"),  # posing as the device
        (other.uid, other.uid, await get_device_token(client, other), f"devices/{uid}/events"),  # another device
    ]
    for client_id, username, password, topic in bad_wills:
        conn = mqtt.new(client_id, username, password, will=(topic, b"bad-will", 1, True))
        if await conn.connect() == 0:
            await conn.drop()  # an unexpected close: a stored will would be published now

            def gone(client_id: str = client_id) -> bool:
                return not broker.is_online(client_id)

            assert await eventually(gone)
        else:
            assert conn.connack == REFUSED
            await conn.close()
    desired = await client.put(f"/v1/devices/{uid}/state/desired", json={"n": 1}, headers=world.owner.headers)
    assert desired.status_code == 200
    assert await watcher.wait_for(f"devices/{uid}/desired", b'{"n":1}')
    assert b"bad-will" not in watcher.payloads() + device_sees.payloads()
    # Nor is any of them retained for a later subscriber.
    late = await mqtt.connect(f"{world.owner.id}-late", world.owner.id, world.owner.tokens["access_token"])
    assert await late.subscribe(f"devices/{uid}/#") == [1]
    assert await late.subscribe(f"devices/{uid}/events") == [1]
    assert b"bad-will" not in late.payloads()


async def test_the_server_says_where_its_broker_listens(client: httpx.AsyncClient, settings: Settings) -> None:
    """So that the SDKs and `handshake demo` need not assume 1883, where another broker may listen."""
    ready = await client.get("/readyz")
    assert ready.json()["mqtt"] == {"port": settings.mqtt_port}, ready.text
    discovery = await client.get("/.well-known/openid-configuration")
    assert discovery.json()["mqtt_port"] == settings.mqtt_port, discovery.text


async def test_a_connect_that_cannot_be_set_up_in_time_is_refused_with_3(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a storm a CONNECT waits for its turn to be set up; past SHED_AFTER from its TCP connection it
    is answered "server unavailable" (3) at once, not left to its client's timeout (issue 11: under load a
    CONNECT is refused with 3 and nothing else). A turn that comes in time is served as usual."""
    world = await make_world(client, users, ctx)
    monkeypatch.setattr(broker_server, "SHED_AFTER", 0.5)
    broker = running_connector(ctx).broker
    assert isinstance(broker, EmbeddedBroker)
    setting_up = broker.server._setting_up
    held = [await setting_up.acquire() for _ in range(broker_server.SET_UP_AT_ONCE)]  # a storm's set-ups
    try:
        assert await mqtt.attempt(world.uid, world.uid, world.device_token) == 3
    finally:
        for _ in held:
            setting_up.release()
    assert await mqtt.attempt(world.uid, world.uid, world.device_token) == 0


@pytest.mark.parametrize("ending", ["dropped", "disconnect"])
async def test_closes_a_client_starts_wait_their_turn_and_all_complete(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, ending: str
) -> None:
    """When clients end their connections faster than the broker closes them (a storm's drop), the
    closes run TEAR_DOWN_AT_ONCE at a time and the rest wait, off the event loop's queue; every one is
    completed once its turn comes, with its presence (issue 11: a 10,000-device drop held every HTTP
    request behind 4 s of closes). A broker-started close (a takeover, a kick) does not wait."""
    world = await make_world(client, users, ctx)
    broker = running_connector(ctx).broker
    assert isinstance(broker, EmbeddedBroker)
    device = await mqtt.connect(world.uid, world.uid, world.device_token)
    closing = broker.server._closing
    held = [await closing.acquire() for _ in range(broker_server.TEAR_DOWN_AT_ONCE)]  # a storm's closes
    try:
        await (device.drop() if ending == "dropped" else device.close())
        await asyncio.sleep(0.5)
        assert broker.server.is_connected(world.uid), "the close did not wait for its turn"
    finally:
        for _ in held:
            closing.release()
    assert await eventually(lambda: not broker.server.is_connected(world.uid))

    async def reasons() -> list[object]:
        found = await events(client, world.admin, type="device_disconnected", device_uid=world.uid)
        return [event["detail"].get("reason") for event in found]

    assert await eventually(reasons) == ["client_closed"]
    assert closing._value == broker_server.TEAR_DOWN_AT_ONCE  # every turn given back

    # A takeover does not wait for a turn: the old connection is closed by the broker itself.
    first = await mqtt.connect(world.uid, world.uid, world.device_token)
    held = [await closing.acquire() for _ in range(broker_server.TEAR_DOWN_AT_ONCE)]
    try:
        second = await mqtt.connect(world.uid, world.uid, world.device_token)
        assert await first.wait_disconnected() and second.is_connected
    finally:
        for _ in held:
            closing.release()


async def test_a_connection_whose_connect_does_not_come_in_time_is_answered_3(
    mqtt: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CONNECT not read within CONNECT_TIMEOUT of the accept (a client that sends nothing, or a
    CONNECT stuck behind a saturated event loop) gets "server unavailable" (3), then the close: a device
    backs off and comes back instead of seeing a bare close (issue 11)."""
    monkeypatch.setattr(broker_server, "CONNECT_TIMEOUT", 0.5)
    silent = mqtt.raw()
    assert await silent.recv(4, timeout=5) == bytes([0x20, 0x02, 0x00, 0x03])  # CONNACK, return code 3
    assert await silent.closed_by_server()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the accept queue's overflow is Linux's")
async def test_a_burst_of_connections_waits_in_the_accept_queue_not_in_tcp_back_off(mqtt: Clients) -> None:
    """500 devices connecting while the event loop is busy all complete their TCP handshake: the accept
    queue holds them (asyncio's default of 100 dropped the SYNs past it, and each client then waited out
    TCP's retransmission back-off of 1, 3, 7 s... before the broker could even see it)."""
    burst = [socket.socket() for _ in range(500)]
    try:
        for sock in burst:
            sock.setblocking(False)
            sock.connect_ex((mqtt.host, mqtt.port))
        deadline = time.monotonic() + 0.5  # the loop is held right here: nothing is accepted meanwhile
        pending = list(burst)
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending, [], 0.05)
            pending = [sock for sock in pending if sock not in writable]
        assert not pending, f"{len(pending)} of 500 connections did not complete while the loop was busy"
    finally:
        for sock in burst:
            sock.close()
