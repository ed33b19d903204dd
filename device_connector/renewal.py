"""Token renewal over a live connection (SPEC §12): a connected device publishes a fresh device token
on `devices/{uid}/token`, a user client a fresh access token of the same session on `$handshake/token`
(embedded broker) or `users/{user_id}/token` (any broker). The token is verified like a CONNECT
password; if it is valid and of the same identity, the connection's deadline moves to its `exp`.
Anything else changes nothing: the connection is still closed at its old deadline (`token_expired`).
No broker delivers what is published on these topics to any subscriber.

The embedded broker says which connection published; a clustered broker does not (the connector
hears the message as a subscriber), so there the topic names the identity, and a user's token renews
that user's connections of the token's session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from device_connector.acl import USER_RENEWAL_TOPIC
from device_connector.port import Connection
from shared.context import Context
from shared.errors import InvalidTokenError, ServiceUnavailableError
from shared.models import Role
from shared.tokens import Claims, TokenKind

log = logging.getLogger("handshake.renewal")
MAX_TOKEN_BYTES = 4096  # our tokens are well under 1 KiB; anything longer is not one of them

Refusal = Callable[[Connection, str], None]


@dataclass(frozen=True)
class Target:
    """Whose connections a renewal message may renew: a device or a user, by the token kind it needs."""

    kind: TokenKind
    subject: str


def target_of(topic: str, conn: Connection | None) -> Target | None:
    """The renewal a message on `topic` asks for; None when `topic` is not a renewal topic. With `conn`
    (the embedded broker, which checked the topic is that connection's own), its identity."""
    if conn is not None:
        return Target(conn.claims.kind, conn.claims.sub)
    if topic == USER_RENEWAL_TOPIC:
        return None  # names nobody without a connection
    parts = topic.split("/")
    if len(parts) != 3 or parts[2] != "token" or not parts[1]:
        return None
    if parts[0] == "devices":
        return Target(TokenKind.DEVICE, parts[1])
    if parts[0] == "users":
        return Target(TokenKind.ACCESS, parts[1])
    return None


class Renewals:
    def __init__(self, ctx: Context, refused: Refusal) -> None:
        self.ctx = ctx
        self.refused = refused  # records a refused renewal (an event), where this replica records it
        self._tasks: set[asyncio.Task[None]] = set()

    def heard(
        self, target: Target, data: bytes, conns: list[Connection], applied: Callable[[Connection], None]
    ) -> None:
        """A renewal message for the live `conns` of `target`; `applied` is told of each one renewed."""
        task = asyncio.ensure_future(self._renew(target, data, conns, applied))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except BaseException:  # noqa: S110 (cancelled or failed: either way it is over)
                pass

    async def _renew(
        self, target: Target, data: bytes, conns: list[Connection], applied: Callable[[Connection], None]
    ) -> None:
        metrics = self.ctx.metrics.mqtt_renewals
        claims, why = await self._verify(target, data)
        if claims is None:
            metrics.labels(result="refused").inc()
            for conn in conns[:1]:  # one event per message, on the connection it came from (or one of them)
                self.refused(conn, why)
            return
        renewed = 0
        for conn in conns:
            if conn.close_reason is not None or not same_identity(conn.claims, claims):
                continue
            if claims.exp > conn.claims.exp:  # an older token of the same identity never shortens it
                conn.claims = claims
                conn.grants.admin = claims.role == Role.ADMIN
                applied(conn)
            renewed += 1
        if renewed:
            metrics.labels(result="renewed").inc()
        else:
            metrics.labels(result="refused").inc()
            for conn in conns[:1]:
                self.refused(conn, "renewal: a token of another session")

    async def _verify(self, target: Target, data: bytes) -> tuple[Claims | None, str]:
        if len(data) > MAX_TOKEN_BYTES:
            return None, "renewal: token too large"
        try:
            token = data.decode("ascii").strip()
        except UnicodeDecodeError:
            return None, "renewal: not a token"
        try:
            claims = await self.ctx.auth.authenticate(token, target.kind)
        except ServiceUnavailableError:
            return None, "renewal: revocation state unconfirmed"
        except InvalidTokenError:
            return None, "renewal: bad token"
        except Exception as exc:  # a garbage token must never take the connector down
            log.warning("renewal token check failed: %r", exc)
            return None, "renewal: bad token"
        if claims.sub != target.subject:
            return None, "renewal: a token of another identity"
        return claims, ""


def same_identity(held: Claims, fresh: Claims) -> bool:
    """A device's token for the same device; a user's access token for the same user and session."""
    if held.kind is not fresh.kind or held.sub != fresh.sub:
        return False
    return held.kind is TokenKind.DEVICE or held.sid == fresh.sid


def connections_of(target: Target, live: Iterable[Connection]) -> list[Connection]:
    """The live connections a renewal message on a clustered broker's topic may renew."""
    if target.kind is TokenKind.DEVICE:
        return [c for c in live if c.is_device and c.client_id == target.subject]
    return [c for c in live if not c.is_device and c.claims.sub == target.subject]
