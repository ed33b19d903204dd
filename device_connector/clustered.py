"""What every clustered-broker adapter shares (SPEC §6 "On a clustered broker").

- `Admissions`: the broker asks our hooks about a CONNECT, then tells us (an event, a webhook) that the
  connection exists, maybe at another replica. The hook keeps the verified claims by client id, in
  Redis where replicas share one, so whichever replica hears of the connection can keep it honest.
- `Once`: any number of replicas hear the same broker event; each kick and each presence change is
  done by the one that claims it first (Redis SET NX), or by this process alone without Redis.
- `Book`: the live connections of the cluster as this replica knows them."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import orjson

from device_connector.gate import Admission
from device_connector.port import CloseReason, Connection
from shared.context import Context
from shared.tokens import Claims, TokenKind

log = logging.getLogger("handshake.clustered")
LOCAL_LIMIT = 100_000


@dataclass(frozen=True)
class Admitted:
    """The claims of an admitted CONNECT, as replicas share them."""

    client_id: str
    username: str
    kind: str
    sub: str
    exp: int
    iat: int
    jti: str
    kid: str
    aud: str
    sid: str | None
    role: str | None

    @classmethod
    def of(cls, client_id: str, username: str, admission: Admission) -> Admitted:
        c = admission.claims
        return cls(client_id, username, c.kind.value, c.sub, c.exp, c.iat, c.jti, c.kid, c.aud, c.sid, c.role)

    def claims(self) -> Claims:
        return Claims(
            kind=TokenKind(self.kind),
            sub=self.sub,
            exp=self.exp,
            iat=self.iat,
            jti=self.jti,
            kid=self.kid,
            aud=self.aud,
            sid=self.sid,
            role=self.role,
        )


class Admissions:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.prefix = ctx.settings.redis_prefix + "mqtt-admitted:"
        self.local: dict[str, Admitted] = {}

    async def put(self, client_id: str, username: str, admission: Admission) -> None:
        admitted = Admitted.of(client_id, username, admission)
        if len(self.local) >= LOCAL_LIMIT:
            self._prune()
        self.local[client_id] = admitted
        if self.ctx.redis is not None:
            # Kept as long as the token can live: a replica that starts later still knows the connection.
            ttl = max(1, admitted.exp - int(time.time()) + self.ctx.settings.leeway)
            await self.ctx.redis.set(self.prefix + client_id, orjson.dumps(asdict(admitted)), ex=ttl)

    async def get(self, client_id: str, username: str) -> Admitted | None:
        found = self.local.get(client_id)
        if found is None and self.ctx.redis is not None:
            try:
                raw = await self.ctx.redis.get(self.prefix + client_id)
            except Exception as exc:
                log.warning("could not read the admission of %s: %r", client_id, exc)
                raw = None
            if raw is not None:
                found = Admitted(**orjson.loads(raw))
        if found is None or found.username != username:
            return None
        return found

    def _prune(self) -> None:
        now = time.time()
        self.local = {k: v for k, v in self.local.items() if v.exp > now}
        if len(self.local) >= LOCAL_LIMIT:
            self.local.clear()


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
    """Live connections by broker-side name and by client id (the newest one wins a client id)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Connection] = {}
        self.by_client: dict[str, Connection] = {}
        self.names: dict[int, str] = {}  # id(conn) -> name

    def add(self, name: str, conn: Connection) -> None:
        self.by_name[name] = conn
        self.by_client[conn.client_id] = conn
        self.names[id(conn)] = name

    def pop(self, name: str) -> Connection | None:
        conn = self.by_name.pop(name, None)
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
