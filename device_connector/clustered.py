"""What every clustered-broker adapter shares (SPEC §6 "On a clustered broker").

- `Admissions`: the broker asks our hooks about a CONNECT, then tells us (an event, a webhook) that the
  connection exists, maybe at another replica. The hook keeps the verified claims by client id, in
  Redis where replicas share one, so whichever replica hears of the connection can keep it honest.
- `Once`: any number of replicas hear the same broker event; each kick and each presence change is
  done by the one that claims it first (Redis SET NX), or by this process alone without Redis.
- `Book`: the live connections of the cluster as this replica knows them.
- `ClusteredBroker`: the part of the broker port both adapters implement alike (relay, tracking,
  kicks retried until the broker reports the close); each adapter adds how it hears of connections
  and how it kicks one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, fields

import httpx
import orjson

from device_connector.acl import Grants, roles_lost
from device_connector.gate import USER_ID, Admission, Gate, is_device_name
from device_connector.mqtt_relay import MqttRelay
from device_connector.port import BrokerEvents, CloseReason, Connection, RefusedError
from shared.context import Context
from shared.models import DeviceRole, Role
from shared.registry import Key
from shared.tokens import Claims, TokenKind

log = logging.getLogger("handshake.clustered")
LOCAL_LIMIT = 100_000


@dataclass(frozen=True)
class Admitted:
    """An admitted CONNECT: the names it used, its token's claims and, for a user, the roles it was
    admitted with (what the broker may have authorized its subscriptions against), as replicas share
    them."""

    client_id: str
    username: str
    claims: Claims
    roles: dict[str, DeviceRole] | None = None

    def to_json(self) -> bytes:
        claims = {f.name: getattr(self.claims, f.name) for f in fields(Claims) if f.name != "payload"}
        return orjson.dumps(
            {"client_id": self.client_id, "username": self.username, "claims": claims, "roles": self.roles}
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Admitted:
        data = orjson.loads(raw)
        claims = data["claims"]
        roles = data.get("roles")
        return cls(
            data["client_id"],
            data["username"],
            Claims(**{**claims, "kind": TokenKind(claims["kind"])}),
            {uid: DeviceRole(role) for uid, role in roles.items()} if isinstance(roles, dict) else None,
        )

    def lost_since(self, grants: Grants) -> bool:
        """Whether `grants` lack a role this connection was admitted with."""
        return roles_lost(self.roles or {}, grants)


class Admissions:
    @classmethod
    def of(cls, ctx: Context) -> Admissions:
        """The process's one instance: the hooks put, the adapter reads."""
        return ctx.services.get(ADMISSIONS, lambda: cls(ctx))

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.prefix = ctx.settings.redis_prefix + "mqtt-admitted:"
        self.local: dict[str, Admitted] = {}

    async def put(self, client_id: str, username: str, admission: Admission) -> None:
        grants = admission.grants
        roles = dict(grants.roles) if grants.user_id is not None else None
        admitted = Admitted(client_id, username, admission.claims, roles)
        if len(self.local) >= LOCAL_LIMIT:
            self._prune()
        self.local[client_id] = admitted
        if self.ctx.redis is not None:
            # Kept as long as the token can live: a replica that starts later still knows the connection.
            ttl = max(1, admitted.claims.exp - int(time.time()) + self.ctx.settings.leeway)
            await self.ctx.redis.set(self.prefix + client_id, admitted.to_json(), ex=ttl)

    async def get(self, client_id: str, username: str) -> Admitted | None:
        """The client id's latest admission. With Redis, the shared one first: this replica's own copy
        may be of an earlier connection that another replica has admitted again since (with the roles
        it has now, which the old copy's would make look lost)."""
        found: Admitted | None = None
        raw: bytes | str | None = None
        if self.ctx.redis is not None:
            try:
                raw = await self.ctx.redis.get(self.prefix + client_id)
            except Exception as exc:
                log.warning("could not read the admission of %s: %r", client_id, exc)
        if raw is not None:
            try:
                found = Admitted.from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:  # unreadable: as if none (fail closed)
                log.warning("unreadable admission of %s: %r", client_id, exc)
                return None
        else:  # no Redis, Redis away, or nothing there: this replica's own copy
            found = self.local.get(client_id)
        if found is None or found.username != username:
            return None
        return found

    def _prune(self) -> None:
        now = time.time()
        self.local = {k: v for k, v in self.local.items() if v.claims.exp > now}
        if len(self.local) >= LOCAL_LIMIT:
            self.local.clear()


ADMISSIONS = Key[Admissions]("admissions")


class Once:
    """Claims for work that one replica of many must do (a kick, a presence write)."""

    def __init__(self, ctx: Context, ttl: int = 60) -> None:
        self.ctx = ctx
        self.ttl = ttl
        self.prefix = ctx.settings.redis_prefix + "mqtt-once:"

    async def claim(self, key: str, value: str = "1") -> bool:
        if self.ctx.redis is None:
            return True
        try:
            return bool(await self.ctx.redis.set(self.prefix + key, value, nx=True, ex=self.ttl))
        except Exception as exc:
            # Doing it twice is better than not at all: a second kick finds nothing, a presence row
            # is written twice with the same values.
            log.warning("could not claim %s (%r): doing it here", key, exc)
            return True

    async def value(self, key: str) -> str | None:
        if self.ctx.redis is None:
            return None
        try:
            raw = await self.ctx.redis.get(self.prefix + key)
        except Exception:
            return None
        return raw.decode() if isinstance(raw, bytes) else raw


class Book:
    """Live connections by broker-side name and by client id (the newest one wins a client id).

    Broker events are handled concurrently, so a connection's close can be heard while its opening is
    still being looked up: a name closed before it was added is remembered for a while, and never added."""

    def __init__(self) -> None:
        self.by_name: dict[str, Connection] = {}
        self.by_client: dict[str, Connection] = {}
        self.names: dict[int, str] = {}  # id(conn) -> name
        self.pending: set[str] = set()  # names whose opening is being looked up now
        self.gone: set[str] = set()  # pending names whose close was heard already

    def expect(self, name: str) -> None:
        """An opening is being looked up: a close heard meanwhile must not be lost."""
        self.pending.add(name)

    def add(self, name: str, conn: Connection | None) -> bool:
        """False if the connection closed while it was looked up (`conn` None: the look-up failed)."""
        self.pending.discard(name)
        if name in self.gone:
            self.gone.discard(name)
            return False
        if conn is None:
            return False
        self.by_name[name] = conn
        self.by_client[conn.client_id] = conn
        self.names[id(conn)] = name
        return True

    def pop(self, name: str) -> Connection | None:
        conn = self.by_name.pop(name, None)
        if conn is None and name in self.pending:
            self.gone.add(name)  # only names being looked up: a name is reused by later connections
        if conn is not None:
            self.names.pop(id(conn), None)
            if self.by_client.get(conn.client_id) is conn:
                del self.by_client[conn.client_id]
        return conn

    def name_of(self, conn: Connection) -> str | None:
        return self.names.get(id(conn))

    def online(self, client_id: str) -> bool:
        return client_id in self.by_client

    def live(self) -> list[Connection]:
        return list(self.by_name.values())


def close_reason(value: str | None) -> CloseReason:
    """A reason the connector recorded for its own close, else the client's doing."""
    try:
        return CloseReason(value) if value else CloseReason.CLIENT_CLOSED
    except ValueError:
        return CloseReason.CLIENT_CLOSED


ADMISSION_WAIT = 3.0  # s a broker's connect event may wait for its admission to reach this replica
KICK_RETRY = (0.2, 0.3, 0.5, 1.0, 2.0)
MAX_KICK_ATTEMPTS = 300  # about 10 minutes: a kick outlives a management API restart


def ours(username: str) -> bool:
    """A device or a user of the platform (not the connector's own account, nor an operator's)."""
    return is_device_name(username) or bool(USER_ID.fullmatch(username))


class ClusteredBroker:
    """The broker port on a clustered broker, less how connections are heard of and kicked."""

    keeps_retained: bool

    def __init__(self, ctx: Context) -> None:
        assert ctx.settings.mqtt_broker_url
        self.ctx = ctx
        self.gate = Gate(ctx)
        self.admissions = Admissions.of(ctx)
        self.once = Once(ctx)
        self.book = Book()
        self.relay = MqttRelay(ctx.settings.mqtt_broker_url, client_id=f"handshake-connector-{secrets.token_hex(4)}")
        self.events: BrokerEvents | None = None
        self._kicks: dict[str, asyncio.Task[None]] = {}  # by connection name, until its close is heard
        self._tasks: set[asyncio.Task[None]] = set()
        # Access notices heard so far: a connection looked up while none came needs no second look.
        self._access_notices = 0
        ctx.revocations.watch("access", self._heard_access)

    def _heard_access(self, uids: list[str]) -> None:
        self._access_notices += 1

    async def _start_relay(self, events: BrokerEvents) -> None:
        self.events = events
        await self.relay.start(lambda topic, data: events.published(None, topic, data))

    async def _stop_tasks(self) -> None:
        tasks = [*self._kicks.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.relay.stop()

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the port ----------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes, *, retain: bool = False) -> None:
        await self.relay.publish(topic, data, retain=retain)

    def is_online(self, client_id: str) -> bool:
        return self.book.online(client_id)

    def connections(self) -> Iterable[Connection]:
        return self.book.live()

    async def close(self, conn: Connection, reason: CloseReason) -> None:
        name = self.book.name_of(conn)
        if name is None or conn.close_reason is not None:
            return
        conn.close_reason = reason
        await self.start_kick(name, conn.username, conn.client_id, reason)

    async def narrow(self, conn: Connection) -> None:
        # The broker checked the subscription once, when it was made, and goes on delivering: the
        # connection goes, and its client reconnects with only what it may still hold.
        await self.close(conn, CloseReason.REVOKED)

    def load_retained(self, topic: str, data: bytes) -> None:
        """A clustered broker keeps retained messages itself."""

    async def renewed(self, conn: Connection) -> None:
        """Every replica hears a renewal and renews its own record of the connection; the shared
        admission is renewed too, for a replica that learns of the connection later."""
        await self.admissions.put(conn.client_id, conn.username, Admission(conn.claims, conn.grants))

    # --- tracking ----------------------------------------------------------------------------------

    async def track(self, name: str, client_id: str, username: str, ip: str | None, *, recorded: bool = False) -> None:
        """The broker reports a connection: keep it honest if some replica admitted it, else close it.
        `recorded`: found by listing the broker's connections, its presence was written when it opened."""
        self.book.expect(name)
        ip = self.ctx.settings.client_address(ip)
        try:
            await self._track(name, client_id, username, ip, recorded=recorded)
        finally:
            if name in self.book.pending:  # the look-up failed
                self.book.add(name, None)

    async def _track(self, name: str, client_id: str, username: str, ip: str | None, *, recorded: bool) -> None:
        admitted = await self._admission(client_id, username)
        if admitted is None:
            # No replica can vouch for this connection's token (its expiry, its session): fail closed.
            await self._turn_away(name, username, client_id, "no admission known for it", logging.WARNING)
            return
        claims = admitted.claims
        device = is_device_name(username)
        notices = self._access_notices
        try:
            grants = await self.gate.grants(claims.sub, device=device, admin=claims.role == Role.ADMIN)
        except RefusedError:
            # What it may touch cannot be read: fail closed, and its client reconnects once it can be.
            await self._turn_away(name, username, client_id, "its roles could not be read", logging.WARNING)
            return
        if admitted.lost_since(grants):
            # A role lost between the CONNECT's admission and now: the broker may hold subscriptions
            # it authorized against it, and the access change came while this connection was not
            # known here, so nothing narrowed it. It goes, and its client reconnects with what is left.
            await self._turn_away(name, username, client_id, "a role was lost since its admission", logging.INFO)
            return
        conn = Connection(client_id=client_id, username=username, claims=claims, grants=grants, ip=ip)
        recorder = not recorded and await self.once.claim(f"created:{name}")
        if not self.book.add(name, conn):
            return  # closed while it was being looked up: nothing to keep honest, nothing to record
        conn.recorder = recorder
        if self.events is not None:
            self.events.connected(conn)
        if not device and self._access_notices != notices:
            await self._recheck(conn, admin=claims.role == Role.ADMIN)

    async def _recheck(self, conn: Connection, *, admin: bool) -> None:
        """An access change heard while the connection's roles were read and it was not yet in the book
        found nothing to narrow: read the roles once more now that it is there, and let it go if it
        lost one. A change after this read reaches it in the book."""
        held = dict(conn.grants.roles)  # as tracked: a change applied during the read is not ours to judge
        try:
            now = await self.gate.grants(conn.claims.sub, device=False, admin=admin)
        except RefusedError:
            lost = True  # unknown whether it lost one: fail closed, its client reconnects
        else:
            lost = roles_lost(held, now)
        if lost:
            log.info("closing MQTT connection of %s: its roles changed while it was looked up", conn.client_id)
            await self.narrow(conn)

    async def _turn_away(self, name: str, username: str, client_id: str, why: str, level: int) -> None:
        """A connection not to be kept: known as closed, and kicked."""
        self.book.add(name, None)
        log.log(level, "closing MQTT connection %s of %s: %s", name, client_id, why)
        await self.start_kick(name, username, client_id, CloseReason.REVOKED)

    async def _admission(self, client_id: str, username: str) -> Admitted | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ADMISSION_WAIT
        while True:
            found = await self.admissions.get(client_id, username)
            if found is not None or loop.time() >= deadline:
                return found
            await asyncio.sleep(0.1)

    async def untrack(self, name: str, broker_reason: CloseReason | None = None) -> None:
        """The broker reports a close. Its reason: the connector's own if it closed it (here or at
        another replica), else what the broker says, else `client_closed`."""
        kick = self._kicks.pop(name, None)
        if kick is not None:
            kick.cancel()
        conn = self.book.pop(name)
        if conn is None:
            return  # a close heard before its opening, or of a connection replaced already
        recorded = await self.once.value(f"kick:{name}")
        reason = conn.close_reason or (close_reason(recorded) if recorded else broker_reason)
        conn.recorder = await self.once.claim(f"closed:{name}")
        if self.events is not None:
            self.events.disconnected(conn, reason or CloseReason.CLIENT_CLOSED)

    # --- kicks -------------------------------------------------------------------------------------

    async def start_kick(self, name: str, username: str, client_id: str, reason: CloseReason) -> None:
        """One replica closes the connection (the one that claims it), retrying until it is gone."""
        if name not in self._kicks and await self.once.claim(f"kick:{name}", reason.value):
            self._kicks[name] = asyncio.create_task(self._kick_until_gone(name, username, client_id, reason))

    async def _kick_until_gone(self, name: str, username: str, client_id: str, reason: CloseReason) -> None:
        for attempt in range(MAX_KICK_ATTEMPTS):
            try:
                if await self.kick(name, username, client_id, reason, attempt=attempt):
                    return  # (its close, heard later, ends the kick's bookkeeping)
            except httpx.HTTPError as exc:
                if attempt % 10 == 0:
                    log.warning("cannot reach the broker's management API to close %s (%r); retrying", name, exc)
            await asyncio.sleep(KICK_RETRY[min(attempt, len(KICK_RETRY) - 1)])
        log.error("gave up closing MQTT connection %s of %s after %d attempts", name, username, MAX_KICK_ATTEMPTS)
        self._kicks.pop(name, None)

    async def kick(self, name: str, username: str, client_id: str, reason: CloseReason, *, attempt: int) -> bool:
        """Ask the broker to close a connection; True once it has (or the connection is gone)."""
        raise NotImplementedError
