"""EMQX 5.8+ behind the broker port (SPEC §6 "On a clustered broker").

- Authentication and authorization come to our hooks (`/v1/mqtt/auth`, `/v1/mqtt/acl`); an allowed
  CONNECT carries `expire_at`, so EMQX also closes the connection at the token's expiry itself.
- Presence: EMQX's rule engine posts `client.connected` / `client.disconnected` to
  `POST /v1/mqtt/emqx/events` at one replica, which passes it to every replica over the fan-out; each
  knows the cluster's connections, and the one that claims an event first records it.
- Kicks: `DELETE /api/v5/clients/{clientid}` on the management API, retried while it is away.
- EMQX checks a subscription when it is made and caches its answer per client: a lost role closes the
  connection. Retained messages are replicated across an EMQX cluster: nothing to re-send."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from device_connector.clustered import Admissions, Book, Once, close_reason
from device_connector.gate import USER_ID, Gate, is_device_name
from device_connector.mqtt_relay import MqttRelay
from device_connector.port import BrokerEvents, CloseReason, Connection
from device_connector.routes.hooks import admissions
from shared.context import Context

log = logging.getLogger("handshake.emqx")
CHANNEL = "mqtt-emqx-events"
ADMISSION_WAIT = 3.0
KICK_RETRY = (0.2, 0.5, 1.0, 2.0)
# EMQX's `reason` of client.disconnected -> ours, where the connector did not close it itself.
REASONS: dict[str, CloseReason] = {
    "normal": CloseReason.CLIENT_CLOSED,
    "tcp_closed": CloseReason.CLIENT_CLOSED,
    "ssl_closed": CloseReason.CLIENT_CLOSED,
    "closed": CloseReason.CLIENT_CLOSED,
    "keepalive_timeout": CloseReason.KEEPALIVE_TIMEOUT,
    "takenover": CloseReason.DUPLICATE_CLIENT_ID,
    "discarded": CloseReason.DUPLICATE_CLIENT_ID,
    "not_authorized": CloseReason.TOKEN_EXPIRED,  # EMQX's own close at `expire_at` (0x87)
    "kicked": CloseReason.REVOKED,  # kicked by an operator, not by us
    "protocol_error": CloseReason.PROTOCOL_ERROR,
    "packet_too_large": CloseReason.PROTOCOL_ERROR,
    "malformed_packet": CloseReason.PROTOCOL_ERROR,
    "shutdown": CloseReason.SERVER_SHUTDOWN,
}


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) and value != "undefined" else ""


def peer_ip(peername: str) -> str | None:
    """`peername` is "ip:port", IPv6 as "[::1]:port" or "::1:port"."""
    if not peername:
        return None
    if peername.startswith("["):
        return peername[1:].split("]", 1)[0] or None
    host = peername.rsplit(":", 1)[0] if ":" in peername else peername
    return host or None


class ClientsApi:
    """EMQX's management API: the one call the connector makes (a kick)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        base = f"{parts.scheme}://{parts.hostname}:{parts.port or 18083}{parts.path.rstrip('/')}"
        self.http = httpx.AsyncClient(base_url=base, auth=auth, timeout=5.0)

    async def kick(self, client_id: str) -> bool:
        """True once the client is disconnected or unknown (204, 404 CLIENTID_NOT_FOUND)."""
        response = await self.http.delete(f"/api/v5/clients/{quote(client_id, safe='')}")
        return response.status_code in (204, 404)

    async def aclose(self) -> None:
        await self.http.aclose()


class EmqxBroker:
    keeps_retained = True

    def __init__(self, ctx: Context) -> None:
        settings = ctx.settings
        assert settings.mqtt_broker_url and settings.mqtt_broker_api_url
        self.ctx = ctx
        self.gate = Gate(ctx)
        self.admissions: Admissions = admissions(ctx)
        self.once = Once(ctx)
        self.book = Book()
        self.relay = MqttRelay(settings.mqtt_broker_url, client_id=f"handshake-connector-{secrets.token_hex(4)}")
        self.api = ClientsApi(settings.mqtt_broker_api_url)
        self.events: BrokerEvents | None = None
        self._kicks: dict[int, asyncio.Task[None]] = {}

    async def start(self, events: BrokerEvents) -> None:
        self.events = events
        self.ctx.fanout.subscribe(CHANNEL, self._on_fanout)
        await self.relay.start(lambda topic, data: events.published(None, topic, data))

    async def stop(self) -> None:
        self.ctx.fanout.unsubscribe(CHANNEL, self._on_fanout)
        for task in self._kicks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.relay.stop()
        await self.api.aclose()

    def ready(self) -> bool:
        return self.relay.connected()

    # --- the webhook (device_connector.routes.hooks), then every replica ---------------------------

    async def webhook(self, body: Mapping[str, Any]) -> bool:
        """One `client.connected` / `client.disconnected` body from EMQX; False if it is not one."""
        event, client_id, username = _text(body, "event"), _text(body, "clientid"), _text(body, "username")
        if event not in ("client.connected", "client.disconnected") or not client_id:
            return False
        connected_at = body.get("connected_at")
        message = {
            "event": event,
            "clientid": client_id[:128],
            "username": username[:128],
            "ip": peer_ip(_text(body, "peername")),
            "connected_at": connected_at if isinstance(connected_at, int) else None,
            "reason": _text(body, "reason")[:64],
        }
        await self.ctx.fanout.publish(CHANNEL, message)
        return True

    async def _on_fanout(self, message: dict[str, Any]) -> None:
        client_id, username = str(message.get("clientid") or ""), str(message.get("username") or "")
        if not (is_device_name(username) or USER_ID.fullmatch(username)):
            return  # the connector's own connection, or a user of EMQX's own
        at = message.get("connected_at")
        # EMQX 5.8.6+ names the connection a disconnect belongs to (connected_at); earlier ones do not.
        name = f"{client_id}@{at}" if at is not None else client_id
        if message.get("event") == "client.connected":
            await self._connected(name, client_id, username, message.get("ip"))
        else:
            await self._disconnected(name, client_id, str(message.get("reason") or ""))

    async def _connected(self, name: str, client_id: str, username: str, ip: Any) -> None:
        admitted = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ADMISSION_WAIT
        while admitted is None and loop.time() < deadline:
            admitted = await self.admissions.get(client_id, username)
            if admitted is None:
                await asyncio.sleep(0.1)
        if admitted is None:
            log.warning("kicking MQTT client %s: no admission known for it", client_id)
            if await self.once.claim(f"kick:{name}", CloseReason.REVOKED.value):
                await self.api.kick(client_id)
            return
        claims = admitted.claims()
        grants = await self.gate.grants(claims.sub, device=is_device_name(username), admin=claims.role == "admin")
        conn = Connection(
            client_id=client_id, username=username, claims=claims, grants=grants, ip=ip if isinstance(ip, str) else None
        )
        old = self.book.by_client.get(client_id)
        if old is not None:  # taken over: the old connection's disconnect may come later, or never
            self.book.pop(self.book.name_of(old) or "")
        conn.recorder = await self.once.claim(f"created:{name}")
        self.book.add(name, conn)
        if self.events is not None:
            self.events.connected(conn)

    async def _disconnected(self, name: str, client_id: str, emqx_reason: str) -> None:
        conn = self.book.by_name.get(name)
        if conn is None and "@" not in name:
            conn = self.book.by_client.get(client_id)
            name = self.book.name_of(conn) or name if conn is not None else name
        if conn is None:
            return  # a late disconnect of a connection already replaced
        self.book.pop(name)
        kick = self._kicks.pop(id(conn), None)
        if kick is not None:
            kick.cancel()
        recorded = await self.once.value(f"kick:{name}")
        reason = conn.close_reason or (close_reason(recorded) if recorded else REASONS.get(emqx_reason))
        conn.recorder = await self.once.claim(f"closed:{name}")
        if self.events is not None:
            self.events.disconnected(conn, reason or CloseReason.CLIENT_CLOSED)

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
        if await self.once.claim(f"kick:{name}", reason.value):
            self._kicks[id(conn)] = asyncio.create_task(self._kick(conn.client_id, reason))

    async def narrow(self, conn: Connection) -> None:
        await self.close(conn, CloseReason.REVOKED)

    def load_retained(self, topic: str, data: bytes) -> None:
        """EMQX keeps retained messages itself, replicated across its cluster."""

    async def _kick(self, client_id: str, reason: CloseReason) -> None:
        attempt = 0
        while True:
            try:
                if await self.api.kick(client_id):
                    return
            except httpx.HTTPError as exc:
                if attempt == 0 or attempt % 10 == 0:
                    log.warning("cannot reach EMQX's API to close %s (%s; %r); retrying", client_id, reason, exc)
            await asyncio.sleep(KICK_RETRY[min(attempt, len(KICK_RETRY) - 1)])
            attempt += 1
