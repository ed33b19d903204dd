"""Revocation reaches what is already flowing (SPEC §4 logout, §5 disable and roles, §6; SECURITY
"revocation must reach what is already flowing"): live connections are closed within 5 s of a logout, a
disabled device or an expired token (only the last one publishes the will); a lost role stops live
deliveries within 5 s and the queue of a persistent session."""

from __future__ import annotations

import json

import httpx
import jwt

from shared.context import Context
from shared.settings import Settings
from shared.testing import forge
from tests.conftest import Users, bearer
from tests.device_connector.helpers import (  # noqa: F401  (mqtt_fixture is the `mqtt` fixture)
    Clients,
    Mqtt,
    events,
    eventually,
    get_device_token,
    make_world,
    mqtt_fixture,
    owned_device,
)
from tests.device_manager import Person, person, staff

WITHIN = 5.0  # SPEC: "within 5 s"


async def marker(client: httpx.AsyncClient, owner_headers: dict[str, str], uid: str, n: int) -> bytes:
    """Publish desired state through the API: a message that goes through the broker after anything
    the broker did before, so a watcher that has it would have had an earlier one too."""
    response = await client.put(f"/v1/devices/{uid}/state/desired", json={"marker": n}, headers=owner_headers)
    assert response.status_code == 200, response.text
    return json.dumps({"marker": n}, separators=(",", ":")).encode()


async def test_logout_closes_that_sessions_mqtt_connections(
    client: httpx.AsyncClient, users: Users, mqtt: Clients
) -> None:
    user = await person(users)
    other_session = await users.login(user.username)
    phone = await mqtt.connect(user.id, user.id, user.tokens["access_token"])
    tablet = await mqtt.connect(f"{user.id}-tablet", user.id, other_session["access_token"])

    assert (await client.post("/v1/auth/logout", headers=user.headers)).status_code == 204
    assert await phone.wait_disconnected(WITHIN), "the logged-out session's connection is still open"
    assert tablet.is_connected  # another session of the same user is not touched
    # The revoked token cannot come back either.
    assert await mqtt.attempt(user.id, user.id, user.tokens["access_token"]) == 5


async def test_disabling_a_device_closes_its_connection_without_its_will(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await owned_device(client, admin, owner)
    uid = device.uid
    watcher = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    assert await watcher.subscribe(f"devices/{uid}/#") == [1]
    conn = await mqtt.connect(
        uid, uid, await get_device_token(client, device), will=(f"devices/{uid}/events", b"will", 1, False)
    )

    response = await client.post(f"/v1/admin/devices/{uid}/disable", headers=admin.headers)
    assert response.status_code in (200, 204), response.text
    assert await conn.wait_disconnected(WITHIN), "a disabled device is still connected"

    async def reasons() -> list[object]:
        found = await events(client, admin, type="device_disconnected", device_uid=uid)
        return [e["detail"].get("reason") for e in found]

    assert await eventually(reasons) == ["disabled"]
    assert await watcher.wait_for(f"devices/{uid}/desired", await marker(client, owner.headers, uid, 1))
    assert b"will" not in watcher.payloads(f"devices/{uid}/events")


async def test_an_expiring_token_closes_the_connection_and_publishes_the_will(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings, mqtt: Clients
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await owned_device(client, admin, owner)
    uid = device.uid
    watcher = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    assert await watcher.subscribe(f"devices/{uid}/#") == [1]
    # DEVICE_TOKEN_TTL has a floor of 60 s: a token of 3 s, signed with the deployment's key.
    token = forge(
        settings.keys_dir,
        claims={"sub": uid, "jti": f"short-{uid}"},
        typ="device+jwt",
        issuer=settings.issuer,
        audience=settings.audience,
        ttl=3,
    )
    conn = await mqtt.connect(uid, uid, token, will=(f"devices/{uid}/events", b"gone", 1, False))

    assert await conn.wait_disconnected(3 + WITHIN), "the connection outlived its token"
    assert await watcher.wait_for(f"devices/{uid}/events", b"gone", WITHIN), "no will after the token expired"

    async def reasons() -> list[object]:
        found = await events(client, admin, type="device_disconnected", device_uid=uid)
        return [e["detail"].get("reason") for e in found]

    assert await eventually(reasons) == ["token_expired"]


async def test_revoking_a_signing_key_closes_the_connections_it_let_in(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    """SPEC §3: `keys revoke` refuses every token the key signed from then on, and MQTT connections
    admitted with one are such tokens still in use: closed within 5 s, like any revocation."""
    world = await make_world(client, users, ctx)
    uid, owner = world.uid, world.owner
    old_kid = jwt.get_unverified_header(world.device_token)["kid"]
    device = await mqtt.connect(uid, uid, world.device_token)
    app = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    ctx.key_dir.add(ctx.settings.jwt_alg)  # what `handshake keys rotate` then `keys revoke` do to the files
    assert ctx.key_dir.remove(old_kid)
    assert await device.wait_disconnected(WITHIN), "a device admitted with a revoked key stayed connected"
    assert await app.wait_disconnected(WITHIN), "an app admitted with a revoked key stayed connected"

    # Every token that key signed is refused, the admin's too: a fresh login is signed by the new key.
    admin = Person(world.admin.id, world.admin.username, await users.login(world.admin.username))

    async def reasons() -> list[object]:
        found = await events(client, admin, type="device_disconnected", device_uid=uid)
        return [e["detail"].get("reason") for e in found]

    assert await eventually(reasons) == ["revoked"]
    assert await mqtt.attempt(uid, uid, world.device_token) == 5  # and the token no longer connects


async def test_unsharing_stops_live_deliveries(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner, viewer = world.uid, world.owner, world.viewer
    topic = f"devices/{uid}/state"
    device = await mqtt.connect(uid, uid, world.device_token)
    watching = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    viewing = await mqtt.connect(viewer.id, viewer.id, viewer.tokens["access_token"])
    assert await watching.subscribe(topic) == [1]
    assert await viewing.subscribe(topic, f"devices/{uid}/#") == [1, 1]
    await device.publish(topic, b"0")
    assert await viewing.wait_for(topic, b"0")

    response = await client.delete(f"/v1/devices/{uid}/shares/{viewer.id}", headers=owner.headers)
    assert response.status_code == 204, response.text

    async def stopped(n: list[int] = [0]) -> int | None:  # noqa: B006  (a counter across calls)
        n[0] += 1
        payload = str(n[0]).encode()
        await device.publish(topic, payload)
        assert await watching.wait_for(topic, payload), "the owner lost a delivery"
        return n[0] if payload not in viewing.payloads(topic) else None

    first_missed = await eventually(stopped, WITHIN, interval=0.1)
    assert first_missed, "the former viewer still gets the device's state"
    for n in range(1, 4):
        payload = f"after-{n}".encode()
        await device.publish(topic, payload)
        assert await watching.wait_for(topic, payload)
    later = viewing.payloads(topic)
    assert not [p for p in later if p.startswith(b"after-")], later
    assert str(first_missed).encode() not in later


async def test_a_persistent_session_gets_nothing_of_a_device_after_losing_the_role(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    world = await make_world(client, users, ctx)
    uid, owner, viewer = world.uid, world.owner, world.viewer
    # A device of the viewer's own, to check the resumed session does get what it may still have.
    own = await owned_device(client, world.admin, viewer)
    own_conn = await mqtt.connect(own.uid, own.uid, await get_device_token(client, own))
    device = await mqtt.connect(uid, uid, world.device_token)
    watching = await mqtt.connect(owner.id, owner.id, owner.tokens["access_token"])
    assert await watching.subscribe(f"devices/{uid}/#") == [1]

    session_id = f"{viewer.id}-persistent"
    token = viewer.tokens["access_token"]
    persistent = await mqtt.connect(session_id, viewer.id, token, clean_session=False)
    filters = (f"devices/{uid}/events", f"devices/{uid}/state", f"devices/{uid}/#", f"devices/{own.uid}/events")
    assert await persistent.subscribe(*filters) == [1, 1, 1, 1]
    await persistent.close()

    async def publish(conn: Mqtt, device_uid: str, channel: str, payload: bytes) -> None:
        await conn.publish(f"devices/{device_uid}/{channel}", payload)

    # Queued while the viewer still held the role...
    await publish(device, uid, "events", b"queued-before")
    await publish(device, uid, "state", b"retained-state")
    assert await watching.wait_for(f"devices/{uid}/events", b"queued-before")
    response = await client.delete(f"/v1/devices/{uid}/shares/{viewer.id}", headers=owner.headers)
    assert response.status_code == 204, response.text
    # ... and after it was gone.
    await publish(device, uid, "events", b"queued-after")
    assert await watching.wait_for(f"devices/{uid}/events", b"queued-after")
    await publish(own_conn, own.uid, "events", b"own-queued")

    resumed = mqtt.new(session_id, viewer.id, token, clean_session=False)
    assert await resumed.connect() == 0
    assert resumed.session_present is True
    assert await resumed.wait_for(f"devices/{own.uid}/events", b"own-queued"), "the session lost its own queue"
    # Live messages after the resume, then one of its own device as a barrier.
    await publish(device, uid, "events", b"live")
    await publish(device, uid, "state", b"live-state")
    assert await watching.wait_for(f"devices/{uid}/state", b"live-state")
    await publish(own_conn, own.uid, "events", b"own-live")
    assert await resumed.wait_for(f"devices/{own.uid}/events", b"own-live")
    leaked = [m for m in resumed.messages() if m.topic.startswith(f"devices/{uid}/")]
    assert leaked == [], leaked

    response = await client.get(f"/v1/devices/{uid}", headers=bearer(token))
    assert response.status_code == 404
