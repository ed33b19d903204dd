"""RabbitMQ 3.10+ behind the broker port (SPEC §6 "On a clustered broker").

- Authentication and topic checks come to our hooks (device_connector.routes.rabbitmq).
- Presence: every replica hears `connection.created` / `connection.closed` on `amq.rabbitmq.event`
  (rabbitmq_event_exchange) through an exclusive queue, so each knows the whole cluster's connections
  (for `409 device_offline` and the sweep); the replica that claims an event first records it.
- Kicks go through the management API (`DELETE /api/connections/{name}`), retried while it is away;
  RabbitMQ never expires a connection itself, so the connector's sweep closes it at the token's `exp`.
- A subscription is checked once, when it is bound: a lost role closes the connection.
- Retained messages stay on the node they were published to: `binding.created` for a device's desired
  topic makes the connector send it its desired state, on whichever node it subscribed."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage

from device_connector.clustered import ClusteredBroker, ours
from device_connector.port import BrokerEvents, CloseReason
from device_connector.routes.rabbitmq import mqtt_topic
from shared.context import Context
from shared.errors import ConfigurationError

log = logging.getLogger("handshake.rabbitmq")
EVENTS = "amq.rabbitmq.event"
ADMISSION_WAIT = 3.0
CATCH_UP_AGAIN = 6.0  # s: longer than the management API takes to list a new connection
NAME_ATTEMPTS = 4  # about 1 s of asking for a connection by name before closing its username's
_ERLANG_TUPLE = re.compile(r"^\{(\d+(?:,\d+){3}|\d+(?:,\d+){7})\}$")


def peer_ip(value: object) -> str | None:
    """`peer_host` as the event exchange sends it: an address, or an Erlang tuple such as
    `{127,0,0,1}` or `{0,0,0,0,0,65535,32512,1}` (IPv6 words)."""
    text = _text(value)
    if not text:
        return None
    found = _ERLANG_TUPLE.match(text.replace(" ", ""))
    if found is None:
        return text
    parts = [int(p) for p in found.group(1).split(",")]
    if len(parts) == 4:
        return ".".join(str(p) for p in parts)
    address = ipaddress.IPv6Address(b"".join(p.to_bytes(2, "big") for p in parts))
    return str(address.ipv4_mapped or address)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


_CLIENT_ID = re.compile(r'<<"client_id">>\s*=>\s*<<"([^"\\]*)"(?:/utf8)?>>')


def client_id_of(headers: Mapping[str, Any]) -> str:
    """The MQTT client id: in `variable_map`, which the event exchange sends as an Erlang map
    (`#{<<"client_id">> => <<"ABC">>}`), or in the management API's `client_properties`. Empty if it
    cannot be read."""
    for field in ("client_properties", "variable_map"):
        found = headers.get(field)
        if isinstance(found, Mapping) and isinstance(found.get("client_id"), str):
            return _text(found["client_id"])
    found = headers.get("variable_map")
    match = _CLIENT_ID.search(_text(found))
    return match.group(1) if match else ""


class ManagementApi:
    """The few calls of RabbitMQ's management HTTP API the connector makes."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{parts.path.rstrip('/')}"
        self.http = httpx.AsyncClient(base_url=base, auth=auth, timeout=5.0)

    async def close_connection(self, name: str, reason: str) -> bool:
        """False if the API does not know the connection (yet: it learns of connections on other nodes
        from their statistics, a moment after they open)."""
        response = await self.http.delete(f"/api/connections/{quote(name, safe='')}", headers={"X-Reason": reason})
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True

    async def close_username(self, username: str, reason: str) -> None:
        """Every connection of `username`, found through the broker's connection tracking at once."""
        response = await self.http.delete(
            f"/api/connections/username/{quote(username, safe='')}", headers={"X-Reason": reason}
        )
        if response.status_code != 404:
            response.raise_for_status()

    async def connections(self) -> list[dict[str, Any]]:
        response = await self.http.get(
            "/api/connections", params={"columns": "name,user,protocol,peer_host,client_properties"}
        )
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    async def aclose(self) -> None:
        await self.http.aclose()


class RabbitBroker(ClusteredBroker):
    keeps_retained = False
    checks_payloads = False

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        assert settings.mqtt_broker_url and settings.mqtt_broker_api_url
        self.api = ManagementApi(settings.mqtt_broker_api_url)
        self.amqp_url = settings.mqtt_broker_amqp_url or _amqp_from(settings.mqtt_broker_url)
        self._amqp: aio_pika.abc.AbstractRobustConnection | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        await self._start_relay(events)
        try:
            self._amqp = await aio_pika.connect_robust(self.amqp_url, timeout=10)
        except Exception as exc:
            await self.relay.stop()
            raise ConfigurationError(
                f"cannot reach RabbitMQ over AMQP for presence events ({exc}): start it or fix"
                " HANDSHAKE_MQTT_BROKER_AMQP_URL (default: HANDSHAKE_MQTT_BROKER_URL's host on 5672)"
            ) from exc
        channel = await self._amqp.channel()
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in ("connection.created", "connection.closed", "binding.created"):
            await queue.bind(EVENTS, routing_key=key)
        # No acknowledgements: the queue is this process's alone and goes with its connection, so an ack
        # would guard nothing, and a reconnect storm is 20,000 events (a catch-up listing follows a
        # reconnect of the AMQP connection).
        await queue.consume(self._on_event, no_ack=True)
        # Events sent while the AMQP connection was down are lost: after it is back, list what exists.
        self._amqp.reconnect_callbacks.add(self._on_reconnect)
        await self._catch_up()
        # The API lists a connection seconds after it opens: one made just before our queue was bound
        # is in neither the events nor that first listing. A second listing finds it, and then every
        # device not connected is offline.
        self.spawn(self._census())

    async def stop(self) -> None:
        await self._stop_tasks()
        if self._amqp is not None:
            await self._amqp.close()
        await self.api.aclose()

    def ready(self) -> bool:
        return self.relay.connected() and self._amqp is not None and not self._amqp.is_closed

    def _on_reconnect(self, _connection: object) -> None:
        log.warning("the AMQP connection for RabbitMQ's events is back: listing connections to catch up")
        self.spawn(self._census(forget_missing=True))

    async def _census(self, *, forget_missing: bool = False) -> None:
        await asyncio.sleep(CATCH_UP_AGAIN)
        if await self._catch_up(forget_missing=forget_missing) and self.events is not None:
            self.events.census(self.book.live())

    async def _catch_up(self, *, forget_missing: bool = False) -> bool:
        """Connections that exist already (made while no replica was running, or before this one).
        `forget_missing`: also those the broker no longer lists, whose close went unheard (the API lists
        a connection seconds after it opens, so only those known for longer than that)."""
        listed_at = time.time()
        try:
            listed = await self.api.connections()
        except Exception as exc:
            log.warning("could not list RabbitMQ's connections (%r): presence follows its events only", exc)
            return False
        if forget_missing:
            names = {_text(item.get("name")) for item in listed}
            for name, conn in list(self.book.by_name.items()):
                if name not in names and conn.connected_at < listed_at - CATCH_UP_AGAIN:
                    await self.untrack(name)
        for item in listed:
            if "mqtt" not in _text(item.get("protocol")).lower():
                continue
            name, username = _text(item.get("name")), _text(item.get("user"))
            client_id = client_id_of(item)
            if name and client_id and ours(username) and name not in self.book.by_name:
                # Found at start: its opening was recorded by whichever replica ran then. Found after
                # events were lost: nobody heard it open.
                ip = peer_ip(item.get("peer_host"))
                await self.track(name, client_id, username, ip, recorded=not forget_missing)
        return True

    # --- events ------------------------------------------------------------------------------------

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        log.debug("event %s: %r", message.routing_key, headers)
        try:
            if message.routing_key == "connection.created":
                await self._created(headers)
            elif message.routing_key == "connection.closed":
                await self.untrack(_text(headers.get("name")))
            elif message.routing_key == "binding.created":
                self._bound(headers)
        except Exception:
            log.exception("RabbitMQ event %s failed", message.routing_key)

    async def _created(self, headers: Mapping[str, Any]) -> None:
        if "mqtt" not in _text(headers.get("protocol")).lower():
            return
        name, username = _text(headers.get("name")), _text(headers.get("user"))
        if not name or not ours(username):
            return  # the connector's own connections, and other internal users
        client_id = client_id_of(headers)
        if not client_id:  # ours, but not one we can keep honest: fail closed
            log.warning("closing MQTT connection %s of %s: its client id cannot be read", name, username)
            await self.start_kick(name, username, client_id, CloseReason.REVOKED)
            return
        await self.track(name, client_id, username, peer_ip(headers.get("peer_host")))

    def _bound(self, headers: Mapping[str, Any]) -> None:
        """A device subscribed to its desired state, on whichever node: send it (retained messages
        stay on the node that got them)."""
        if _text(headers.get("source_name")) != "amq.topic" or self.events is None:
            return
        queue = _text(headers.get("destination_name"))
        client_id = queue.removeprefix("mqtt-subscription-")[: -len("qos1")]
        topic = mqtt_topic(_text(headers.get("routing_key")))
        conn = self.book.by_client.get(client_id)
        if conn is not None and conn.is_device and topic == f"devices/{client_id}/desired":
            events = self.events

            async def send_once() -> None:
                if await self.once.claim(f"bound:{queue}:{self.book.name_of(conn)}"):
                    events.subscribed(client_id, topic)

            self.spawn(send_once())

    # --- kicks -------------------------------------------------------------------------------------

    async def kick(self, name: str, username: str, client_id: str, reason: CloseReason, *, attempt: int) -> bool:
        """By name where its username has other connections; by username where it is the only one (a
        device's always is) or where the API cannot single it out in time (it lists a connection
        seconds after it opens, while closing by username works at once)."""
        alone = sum(1 for conn in self.book.live() if conn.username == username) <= 1
        if alone or attempt >= NAME_ATTEMPTS:
            if not alone and attempt == NAME_ATTEMPTS:
                log.warning("cannot single out %s: closing every connection of %s", name, username)
            await self.api.close_username(username, reason.value)
            return True
        return await self.api.close_connection(name, reason.value)


def _amqp_from(mqtt_url: str) -> str:
    parts = urlsplit(mqtt_url)
    creds = f"{parts.username}:{parts.password}@" if parts.username else ""
    scheme, port = ("amqps", 5671) if parts.scheme == "mqtts" else ("amqp", 5672)
    return f"{scheme}://{creds}{parts.hostname}:{port}/"
