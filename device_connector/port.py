"""The broker port: what the connector needs of an MQTT broker, whichever runs (SPEC §6). The embedded
amqtt broker, RabbitMQ and EMQX each implement `Broker`; the connector's revocation, role-loss,
disable and expiry handling, presence, relay and state code talk to this port only, and hear the
broker through `BrokerEvents`, with a `Connection` record that is ours, not the broker's."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Protocol

from device_connector.acl import Grants
from shared.tokens import Claims, TokenKind


class CloseReason(StrEnum):
    """`detail.reason` of device_disconnected (SPEC §7)."""

    CLIENT_CLOSED = "client_closed"
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    TOKEN_EXPIRED = "token_expired"
    REVOKED = "revoked"
    DISABLED = "disabled"
    DUPLICATE_CLIENT_ID = "duplicate_client_id"
    PROTOCOL_ERROR = "protocol_error"
    SERVER_SHUTDOWN = "server_shutdown"


# Server-side closes after which no will is published (SPEC §6: not for a revocation or a disable).
NO_WILL = frozenset({CloseReason.REVOKED, CloseReason.DISABLED, CloseReason.SERVER_SHUTDOWN})


class ConnackCode(IntEnum):
    """MQTT 3.1.1 §3.2.2.3 CONNACK return codes."""

    ACCEPTED = 0
    SERVER_UNAVAILABLE = 3
    BAD_CREDENTIALS = 4
    NOT_AUTHORIZED = 5


class RefusedError(Exception):
    """A CONNECT turned down, with the return code an embedded broker sends for it. (RabbitMQ and EMQX
    pick their own code for a deny; RabbitMQ's is 4.)"""

    def __init__(self, code: ConnackCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(eq=False)
class Connection:
    """One live MQTT connection as the connector sees it. `grants` is updated in place when roles change;
    `close_reason` is set when the connector (or the broker, for a protocol error) closes it."""

    client_id: str
    username: str
    claims: Claims
    grants: Grants
    ip: str | None = None
    connected_at: float = field(default_factory=time.time)
    close_reason: CloseReason | None = None
    pending_deliveries: int = 0
    # Whether this process writes the connection's presence and events: exactly one replica does.
    recorder: bool = True

    @property
    def is_device(self) -> bool:
        return self.claims.kind is TokenKind.DEVICE

    @property
    def uid(self) -> str | None:
        """The device UID of a device's connection."""
        return self.claims.sub if self.is_device else None


class BrokerEvents(Protocol):
    """What a broker adapter tells the connector. Each is called once per event across all replicas."""

    def connected(self, conn: Connection) -> None: ...

    def disconnected(self, conn: Connection, reason: CloseReason) -> None: ...

    def published(self, conn: Connection | None, topic: str, data: bytes) -> None: ...

    def denied(self, conn: Connection, topic: str, *, reason: str | None = None) -> None:
        """A publish dropped: not allowed by the ACL, or (with `reason`) for what it carries."""
        ...

    def refused(self, *, client_id: str, username: str | None, ip: str | None, reason: str) -> None: ...

    def census(self, live: Iterable[Connection]) -> None:
        """The broker was asked for every live connection: a device without one is offline (after a
        crash no device stays marked online, SPEC §11), and one with a connection whose opening went
        unheard is online."""
        ...

    def subscribed(self, client_id: str, topic: str) -> None:
        """A subscription was made (reported only by brokers that do not keep retained messages)."""
        ...


class Broker(Protocol):
    """An MQTT broker as the connector drives it."""

    # False where a retained message stays on the node it was published to (RabbitMQ): the connector
    # then sends a device its desired state when it subscribes (`BrokerEvents.subscribed`).
    keeps_retained: bool
    # True where the broker drops a message whose payload breaks the JSON bounds before delivering it
    # (the embedded one); otherwise the connector checks what it is told was published.
    checks_payloads: bool

    async def start(self, events: BrokerEvents) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool:
        """For /readyz: serving (embedded) or reachable (clustered)."""
        ...

    async def publish(self, topic: str, data: bytes, *, retain: bool = False) -> None:
        """A message from the platform itself (commands, desired state), at QoS 1."""
        ...

    def is_online(self, client_id: str) -> bool: ...

    def connections(self) -> Iterable[Connection]:
        """The live connections whose tokens and grants the connector keeps honest."""
        ...

    async def close(self, conn: Connection, reason: CloseReason) -> None:
        """Close one connection for `reason`, by client id; where the broker cannot single it out, with
        every other connection of its username (their clients reconnect with their own tokens)."""
        ...

    async def narrow(self, conn: Connection) -> None:
        """`conn.grants` just lost a role: enforce it on what already flows. The embedded broker drops
        the subscriptions no longer allowed; a broker that checks a subscription only when it is made
        closes the connection."""
        ...

    def load_retained(self, topic: str, data: bytes) -> None:
        """State kept in the database, retained again after a restart (where the broker forgets it)."""
        ...

    async def renewed(self, conn: Connection) -> None:
        """`conn.claims` now hold a renewed token (SPEC §12): keep what the broker or other replicas
        know of the connection's deadline in step."""
        ...
