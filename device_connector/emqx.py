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

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from device_connector.clustered import ClusteredBroker, ours
from device_connector.port import BrokerEvents, CloseReason
from shared.context import Context

log = logging.getLogger("handshake.emqx")
CHANNEL = "mqtt-emqx-events"
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


class EmqxBroker(ClusteredBroker):
    keeps_retained = True  # (and presence follows EMQX's webhooks alone: no census of its clients)
    checks_payloads = False

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        assert ctx.settings.mqtt_broker_api_url
        self.api = ClientsApi(ctx.settings.mqtt_broker_api_url)

    async def start(self, events: BrokerEvents) -> None:
        self.ctx.fanout.subscribe(CHANNEL, self._on_fanout)
        await self._start_relay(events)

    async def stop(self) -> None:
        self.ctx.fanout.unsubscribe(CHANNEL, self._on_fanout)
        await self._stop_tasks()
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
        if not ours(username):
            return  # the connector's own connection, or a user of EMQX's own
        at = message.get("connected_at")
        # EMQX 5.8.6+ names the connection a disconnect belongs to (connected_at); earlier ones do not.
        name = f"{client_id}@{at}" if at is not None else client_id
        if message.get("event") == "client.connected":
            old = self.book.by_client.get(client_id)
            if old is not None:  # taken over: the old connection's disconnect may come later, or never
                self.book.pop(self.book.name_of(old) or "")
            ip = message.get("ip")
            await self.track(name, client_id, username, ip if isinstance(ip, str) else None)
            return
        if name not in self.book.by_name and at is None:
            found = self.book.by_client.get(client_id)
            name = (self.book.name_of(found) if found is not None else None) or name
        await self.untrack(name, REASONS.get(str(message.get("reason") or "")))

    async def kick(self, name: str, username: str, client_id: str, reason: CloseReason, *, attempt: int) -> bool:
        return await self.api.kick(client_id)
