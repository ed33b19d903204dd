"""The topic ACL of SPEC §6, straight from its table: {device, owner, controller, viewer, stranger} ×
{commands, replies, state, events, desired} × {publish, subscribe}. First as pure functions
(device_connector.acl, no broker), then the same table through the real broker: SUBACK return codes,
and a denied PUBLISH dropped (a client allowed to see the topic never gets it) and recorded as
`acl_denied`."""

from __future__ import annotations

import httpx
import pytest

from device_connector.acl import Grants, may_publish, may_receive, may_subscribe, valid_topic
from shared.context import Context
from shared.models import DeviceRole
from tests.conftest import Users
from tests.device_connector.helpers import (  # noqa: F401  (mqtt_fixture is the `mqtt` fixture)
    CHANNELS,
    DENIED,
    Clients,
    Mqtt,
    events,
    eventually,
    make_world,
    mqtt_fixture,
)

UID = "ABCDEFGHIJ0123456789"
OTHER = "ZYXWVUTSRQ9876543210"
WHO = ("device", "owner", "controller", "viewer", "stranger")

# SPEC §6: what each party may do on devices/{uid}/{channel}; everything else is denied.
TABLE: dict[str, dict[str, set[str]]] = {
    "device": {
        "commands": {"subscribe"},
        "replies": {"publish"},
        "state": {"publish"},
        "events": {"publish"},
        "desired": {"subscribe"},
    },
    "owner": {
        "commands": {"publish"},
        "replies": {"subscribe"},
        "state": {"subscribe"},
        "events": {"subscribe"},
        "desired": {"subscribe"},
    },
    "controller": {
        "commands": {"publish"},
        "replies": {"subscribe"},
        "state": {"subscribe"},
        "events": {"subscribe"},
        "desired": {"subscribe"},
    },
    "viewer": {
        "commands": set(),
        "replies": set(),
        "state": {"subscribe"},
        "events": {"subscribe"},
        "desired": {"subscribe"},
    },
    "stranger": {channel: set() for channel in CHANNELS},
}


def grants(who: str, uid: str = UID) -> Grants:
    if who == "device":
        return Grants.for_device(uid)
    if who == "admin":
        return Grants.for_user("a" * 20, {}, admin=True)
    roles = {} if who == "stranger" else {uid: DeviceRole(who)}
    return Grants.for_user("u" * 20, roles)


# --- the pure table ------------------------------------------------------------------------------


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("channel", CHANNELS)
def test_table(who: str, channel: str) -> None:
    topic = f"devices/{UID}/{channel}"
    allowed = TABLE[who][channel]
    assert may_publish(grants(who), topic) is ("publish" in allowed)
    assert may_subscribe(grants(who), topic) is ("subscribe" in allowed)
    # Delivery-time authorization agrees with SUBSCRIBE for an exact topic.
    assert may_receive(grants(who), topic) is ("subscribe" in allowed)


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("channel", CHANNELS)
def test_another_devices_topics_are_denied(who: str, channel: str) -> None:
    topic = f"devices/{OTHER}/{channel}"
    assert not may_publish(grants(who), topic)
    assert not may_subscribe(grants(who), topic)
    assert not may_receive(grants(who), topic)


@pytest.mark.parametrize("who", ("device", "owner", "controller", "viewer", "stranger", "admin"))
@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "devices/#",
        "devices/+",
        "devices/+/state",
        "devices/+/+",
        "devices/+/#",
        "+/+/+",
        f"+/{UID}/state",
        f"#/{UID}/state",
        "devices/#/state",
        f"devices/{UID[:10]}+/state",
        f"devices/{UID}/state/#",
        f"devices/{UID}/+/+",
        f"devices/{UID}",
        f"devices/{UID}/",
        "devices//state",
        f"DEVICES/{UID}/state",
        f"devices/{UID.lower()}/state",
        f"devices/{UID}/unknown",
    ],
)
def test_wildcard_abuse_is_denied(who: str, topic_filter: str) -> None:
    assert not may_subscribe(grants(who), topic_filter)


@pytest.mark.parametrize("topic_filter", [f"devices/{UID}/#", f"devices/{UID}/+"])
def test_wildcards_inside_one_viewable_device(topic_filter: str) -> None:
    for who in ("owner", "controller", "viewer"):
        assert may_subscribe(grants(who), topic_filter), who
    assert not may_subscribe(grants("stranger"), topic_filter)
    assert not may_subscribe(grants("viewer", uid=OTHER), topic_filter)
    # Under a permitted wildcard, delivery still follows the table topic by topic.
    viewer = grants("viewer")
    assert may_receive(viewer, f"devices/{UID}/state")
    assert not may_receive(viewer, f"devices/{UID}/commands")
    assert not may_receive(viewer, f"devices/{UID}/replies")


def test_publishing_with_wildcards_is_denied() -> None:
    for who in WHO:
        for topic in (f"devices/{UID}/#", f"devices/{UID}/+", "devices/+/commands", "#"):
            assert not may_publish(grants(who), topic), (who, topic)


def test_sys_topics_are_for_admins_only() -> None:
    assert may_subscribe(grants("admin"), "$SYS/#")
    assert may_receive(grants("admin"), "$SYS/broker/uptime")
    for who in WHO:
        assert not may_subscribe(grants(who), "$SYS/#"), who
        assert not may_receive(grants(who), "$SYS/broker/uptime"), who
    # That is an admin's only exemption: no device topics, no publishing on $SYS.
    for channel in CHANNELS:
        assert not may_subscribe(grants("admin"), f"devices/{UID}/{channel}")
        assert not may_publish(grants("admin"), f"devices/{UID}/{channel}")
    assert not may_subscribe(grants("admin"), "#")
    assert not may_publish(grants("admin"), "$SYS/broker/uptime")


def test_topic_limits() -> None:
    assert valid_topic("/".join(["a"] * 32))
    assert not valid_topic("/".join(["a"] * 33))
    assert valid_topic("a" * 256)
    assert not valid_topic("a" * 257)
    assert valid_topic("é" * 128)  # 256 bytes of UTF-8
    assert not valid_topic("é" * 128 + "a")  # bytes count, not characters
    assert not valid_topic("")
    # Over a limit nothing is allowed, whatever the grants.
    long_device = grants("device", uid="A" * 260)
    assert not may_publish(long_device, f"devices/{'A' * 260}/state")
    assert not may_subscribe(grants("owner"), f"devices/{UID}/" + "/".join(["+"] * 31))


# --- the same table through the real broker -----------------------------------------------------


async def test_table_through_the_broker(client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients) -> None:
    world = await make_world(client, users, ctx)
    uid = world.uid
    people = {"owner": world.owner, "controller": world.controller, "viewer": world.viewer, "stranger": world.stranger}
    conns: dict[str, Mqtt] = {"device": await mqtt.connect(uid, uid, world.device_token)}
    for who, someone in people.items():
        conns[who] = await mqtt.connect(someone.id, someone.id, someone.tokens["access_token"])

    # SUBSCRIBE: granted QoS (1 asked, 1 granted) where the table allows, 0x80 elsewhere.
    for who, conn in conns.items():
        codes = await conn.subscribe(*(f"devices/{uid}/{channel}" for channel in CHANNELS))
        expected = [1 if "subscribe" in TABLE[who][channel] else DENIED for channel in CHANNELS]
        assert codes == expected, who

    # Wildcards: only inside one device the client can view; $SYS/# for an admin only.
    viewer = conns["viewer"]
    abuse = ["#", "devices/#", "devices/+/state", "+/+/+", f"devices/{uid}/#", f"devices/{uid}/+", "$SYS/#"]
    assert await viewer.subscribe(*abuse) == [DENIED, DENIED, DENIED, DENIED, 1, 1, DENIED]
    assert await conns["stranger"].subscribe(f"devices/{uid}/#", f"devices/{uid}/+") == [DENIED, DENIED]
    admin = await mqtt.connect(world.admin.id, world.admin.id, world.admin.tokens["access_token"])
    assert await admin.subscribe("$SYS/#", "#", f"devices/{uid}/#") == [1, DENIED, DENIED]

    # PUBLISH: observers allowed to see each topic: the device (commands, desired) and the owner
    # on a second connection (replies, state, events, desired).
    watcher = await mqtt.connect(f"{world.owner.id}-watch", world.owner.id, world.owner.tokens["access_token"])
    assert await watcher.subscribe(f"devices/{uid}/#") == [1]
    observers = {
        "commands": conns["device"],
        "desired": watcher,
        "replies": watcher,
        "state": watcher,
        "events": watcher,
    }
    sent: dict[str, set[bytes]] = {channel: set() for channel in CHANNELS}
    denied = []
    for who, conn in conns.items():
        for channel in CHANNELS:
            payload = f"{who}:{channel}".encode()
            await conn.publish(f"devices/{uid}/{channel}", payload)
            if "publish" in TABLE[who][channel]:
                sent[channel].add(payload)
            else:
                denied.append((who, channel))

    # Every denied publish is recorded once; by then the broker has dropped it.
    async def recorded() -> list[dict[str, object]]:
        found = await events(client, world.admin, type="acl_denied")
        return found if len(found) >= len(denied) else []

    found = await eventually(recorded)
    assert len(found) == len(denied), found
    assert {e["detail"]["topic"] for e in found} == {f"devices/{uid}/{channel}" for _, channel in denied}
    assert all(e["device_uid"] == uid for e in found)
    actors = {e["actor_id"] for e in found}
    assert actors == {uid, world.owner.id, world.controller.id, world.viewer.id, world.stranger.id}

    for channel, observer in observers.items():
        topic = f"devices/{uid}/{channel}"

        def arrived(observer: Mqtt = observer, topic: str = topic, channel: str = channel) -> bool:
            return sent[channel] <= set(observer.payloads(topic))

        assert await eventually(arrived), (channel, observer.payloads(topic))
        assert set(observer.payloads(topic)) == sent[channel], channel
    # The owner's wildcard never carried a topic the owner may not receive.
    assert not watcher.payloads(f"devices/{uid}/commands")
