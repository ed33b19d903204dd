"""The MQTT topic ACL of SPEC §6, as pure functions over a connection's grants: no I/O, no token
decoding, a few dictionary lookups per check. The broker and the EMQX hooks both ask here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import orjson

from shared import jsonlimits
from shared.models import DeviceRole

MAX_TOPIC_LEVELS = 32
MAX_TOPIC_BYTES = 256


class Action(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


class Channel(StrEnum):
    COMMANDS = "commands"
    REPLIES = "replies"
    STATE = "state"
    EVENTS = "events"
    DESIRED = "desired"
    TOKEN = "token"  # a fresh device token, renewing the connection (SPEC §12); never delivered


# The embedded broker's renewal topic for a user (SPEC §12); clustered brokers cannot route `$`
# topics, so there (and here too) a user may renew on `users/{user_id}/token`.
USER_RENEWAL_TOPIC = "$handshake/token"


# SPEC §6 table: what the device itself may do on its own topics...
DEVICE_RULES: dict[Channel, Action] = {
    Channel.COMMANDS: Action.SUBSCRIBE,
    Channel.REPLIES: Action.PUBLISH,
    Channel.STATE: Action.PUBLISH,
    Channel.EVENTS: Action.PUBLISH,
    Channel.DESIRED: Action.SUBSCRIBE,
    Channel.TOKEN: Action.PUBLISH,
}
# ... and the smallest role a user needs on the device for each (channel, action).
USER_RULES: dict[tuple[Channel, Action], DeviceRole] = {
    (Channel.COMMANDS, Action.PUBLISH): DeviceRole.CONTROLLER,
    (Channel.REPLIES, Action.SUBSCRIBE): DeviceRole.CONTROLLER,
    (Channel.STATE, Action.SUBSCRIBE): DeviceRole.VIEWER,
    (Channel.EVENTS, Action.SUBSCRIBE): DeviceRole.VIEWER,
    (Channel.DESIRED, Action.SUBSCRIBE): DeviceRole.VIEWER,
}
_CHANNELS = {c.value: c for c in Channel}


@dataclass
class Grants:
    """What one connection may touch. `roles` is updated in place when roles change (SPEC §5)."""

    device_uid: str | None = None
    user_id: str | None = None
    admin: bool = False
    roles: dict[str, DeviceRole] = field(default_factory=dict)

    @classmethod
    def for_device(cls, uid: str) -> Grants:
        return cls(device_uid=uid)

    @classmethod
    def for_user(cls, user_id: str, roles: dict[str, DeviceRole], *, admin: bool = False) -> Grants:
        return cls(user_id=user_id, roles=roles, admin=admin)


def role_lost(before: DeviceRole | None, now: DeviceRole | None) -> bool:
    """Whether a connection that held `before` on a device holds less now (a subscription the broker
    authorized against `before` may no longer be allowed)."""
    return before is not None and (now is None or now.rank < before.rank)


def roles_lost(before: Mapping[str, DeviceRole], now: Grants) -> bool:
    """Whether `now` lacks a role held in `before`, on any device."""
    return any(role_lost(role, now.roles.get(uid)) for uid, role in before.items())


def valid_topic(topic: str) -> bool:
    """Limits of SPEC §6: at most 32 levels and 256 bytes; no NUL."""
    return (
        0 < len(topic.encode("utf-8", "surrogatepass")) <= MAX_TOPIC_BYTES
        and topic.count("/") < MAX_TOPIC_LEVELS
        and "\x00" not in topic
    )


def _split(topic: str) -> tuple[str, Channel] | None:
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "devices":
        return None
    channel = _CHANNELS.get(parts[2])
    return (parts[1], channel) if channel is not None and parts[1] else None


def allowed(grants: Grants, uid: str, channel: Channel, action: Action) -> bool:
    if grants.device_uid is not None:
        return grants.device_uid == uid and DEVICE_RULES[channel] is action
    needed = USER_RULES.get((channel, action))
    role = grants.roles.get(uid)
    return needed is not None and role is not None and role.rank >= needed.rank


def renews(grants: Grants, topic: str) -> bool:
    """Whether `topic` is the connection's own token-renewal topic (SPEC §12): what is published there
    is checked as a token and never delivered to anyone. Asked of every publish: the suffix first."""
    if not topic.endswith("/token"):
        return False
    if grants.device_uid is not None:
        return topic == f"devices/{grants.device_uid}/token"
    return grants.user_id is not None and topic in (USER_RENEWAL_TOPIC, f"users/{grants.user_id}/token")


def may_publish(grants: Grants, topic: str) -> bool:
    if not valid_topic(topic) or "+" in topic or "#" in topic:
        return False
    if renews(grants, topic):
        return True
    split = _split(topic)
    return split is not None and allowed(grants, split[0], split[1], Action.PUBLISH)


# Channels whose payloads the platform reads (a reply goes back to an HTTP caller, state is stored and
# served, a command is the device's to parse), and the ones whose messages may be retained (SPEC §6
# table: reported and desired state; a retained command would replay to the device on every subscribe).
_JSON_CHANNELS = frozenset({Channel.COMMANDS, Channel.REPLIES, Channel.STATE})
_RETAINED_CHANNELS = frozenset({Channel.STATE, Channel.DESIRED})


def payload_refusal(topic: str, data: bytes) -> str | None:
    """Why a publish on `topic` must be dropped for what it carries (a JSON document nested too deep,
    or holding a NUL); None when it may go on. A payload that is not JSON at all is passed on as it
    is (and never stored)."""
    split = _split(topic)
    if split is None or split[1] not in _JSON_CHANNELS:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    found = jsonlimits.problem(value)
    return None if found is None else f"payload {found}"


def may_retain(topic: str) -> bool:
    split = _split(topic)
    return split is not None and split[1] in _RETAINED_CHANNELS


def may_receive(grants: Grants, topic: str) -> bool:
    """Checked at delivery time, for every message, retained and queued ones included."""
    if topic.startswith("$SYS/"):
        return grants.admin
    split = _split(topic)
    return split is not None and allowed(grants, split[0], split[1], Action.SUBSCRIBE)


def may_subscribe(grants: Grants, topic_filter: str) -> bool:
    """Exact topics by the table; wildcards only inside one device (`devices/{uid}/#`, `devices/{uid}/+`)."""
    if not valid_topic(topic_filter):
        return False
    if topic_filter == "$SYS/#" or topic_filter.startswith("$SYS/"):
        return grants.admin
    parts = topic_filter.split("/")
    if len(parts) != 3 or parts[0] != "devices" or parts[1] in ("", "+", "#") or "#" in parts[1] or "+" in parts[1]:
        return False
    uid, last = parts[1], parts[2]
    if last in ("#", "+"):
        # A wildcard is allowed where at least one topic under it is: delivery checks each message.
        return any(allowed(grants, uid, channel, Action.SUBSCRIBE) for channel in Channel)
    channel = _CHANNELS.get(last)
    return channel is not None and allowed(grants, uid, channel, Action.SUBSCRIBE)


def acl_rules(grants: Grants) -> list[dict[str, str]]:
    """The grants as an EMQX 5 `acl` list, for an external broker to enforce itself (SPEC §6)."""
    rules: list[dict[str, str]] = []
    if grants.device_uid is not None:
        for channel, action in DEVICE_RULES.items():
            rules.append(
                {"permission": "allow", "action": action.value, "topic": f"devices/{grants.device_uid}/{channel.value}"}
            )
    else:
        for uid, role in sorted(grants.roles.items()):
            for (channel, action), needed in USER_RULES.items():
                if role.rank >= needed.rank:
                    rules.append(
                        {"permission": "allow", "action": action.value, "topic": f"devices/{uid}/{channel.value}"}
                    )
        if grants.user_id is not None:
            rules.append({"permission": "allow", "action": "publish", "topic": f"users/{grants.user_id}/token"})
        if grants.admin:
            rules.append({"permission": "allow", "action": "subscribe", "topic": "$SYS/#"})
    rules.append({"permission": "deny", "action": "all", "topic": "#"})
    return rules
