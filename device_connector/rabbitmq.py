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
import contextlib
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage

from device_connector.clustered import Admissions, Book, Once, close_reason
from device_connector.gate import USER_ID, Gate, is_device_name
from device_connector.mqtt_relay import MqttRelay
from device_connector.port import BrokerEvents, CloseReason, Connection
from device_connector.routes.hooks import admissions
from device_connector.routes.rabbitmq import mqtt_topic
from shared.context import Context

log = logging.getLogger("handshake.rabbitmq")
EVENTS = "amq.rabbitmq.event"
ADMISSION_WAIT = 3.0  # how long a connection.created may wait for its admission to reach us
KICK_RETRY = (0.2, 0.3, 0.5, 1.0, 2.0)
MAX_ATTEMPTS = 300  # about 10 minutes: a kick outlives a management API restart
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
    import ipaddress

    address = ipaddress.IPv6Address(b"".join(p.to_bytes(2, "big") for p in parts))
    return str(address.ipv4_mapped or address)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


_CLIENT_ID = re.compile(r'<<"client_id">>\s*=>\s*<<"([^"\\]*)"(?:/utf8)?>>')


def client_id_of(headers: Mapping[str, Any]) -> str:
    """The MQTT client id: in `variable_map`, which the event exchange sends as an Erlang map
    (`#{<<"client_id">> => <<"ABC">>}`) and the management API as JSON. Empty if it cannot be read."""
    found = headers.get("variable_map")
    if isinstance(found, Mapping):
        return _text(found.get("client_id"))
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


class RabbitBroker:
    keeps_retained = False

    def __init__(self, ctx: Context) -> None:
        settings = ctx.settings
        assert settings.mqtt_broker_url and settings.mqtt_broker_api_url
        self.ctx = ctx
        self.gate = Gate(ctx)
        self.admissions: Admissions = admissions(ctx)
        self.once = Once(ctx)
        self.book = Book()
        self.relay = MqttRelay(settings.mqtt_broker_url, client_id=f"handshake-connector-{secrets.token_hex(4)}")
        self.api = ManagementApi(settings.mqtt_broker_api_url)
        self.amqp_url = settings.mqtt_broker_amqp_url or _amqp_from(settings.mqtt_broker_url)
        self.events: BrokerEvents | None = None
        self._amqp: aio_pika.abc.AbstractRobustConnection | None = None
        self._kicks: dict[str, asyncio.Task[None]] = {}  # by connection name, until connection.closed
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        self.events = events
        await self.relay.start(lambda topic, data: events.published(None, topic, data))
        try:
            self._amqp = await aio_pika.connect_robust(self.amqp_url, timeout=10)
        except Exception as exc:
            await self.relay.stop()
            raise ConnectionError(f"cannot reach RabbitMQ over AMQP for presence events: {exc}") from exc
        channel = await self._amqp.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in ("connection.created", "connection.closed", "binding.created"):
            await queue.bind(EVENTS, routing_key=key)
        await queue.consume(self._on_event)
        await self._catch_up()

    async def stop(self) -> None:
        tasks = [*self._kicks.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._amqp is not None:
            await self._amqp.close()
        await self.relay.stop()
        await self.api.aclose()

    def ready(self) -> bool:
        return self.relay.connected() and self._amqp is not None and not self._amqp.is_closed

    async def _catch_up(self) -> None:
        """Connections that exist already (made while no replica was running, or before this one):
        tracked if some replica admitted them, closed if none can vouch for their token."""
        try:
            listed = await self.api.connections()
        except Exception as exc:
            log.warning("could not list RabbitMQ's connections at start (%r): presence follows events only", exc)
            return
        for item in listed:
            if "mqtt" not in _text(item.get("protocol")).lower():
                continue
            name, username = _text(item.get("name")), _text(item.get("user"))
            client_id = client_id_of(item)
            if name and client_id and _ours(username) and name not in self.book.by_name:
                await self._adopt(name, client_id, username, peer_ip(item.get("peer_host")), recorded=True)

    # --- events ------------------------------------------------------------------------------------

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            headers = message.headers or {}
            log.debug("event %s: %r", message.routing_key, headers)
            try:
                if message.routing_key == "connection.created":
                    await self._created(headers)
                elif message.routing_key == "connection.closed":
                    await self._closed(headers)
                elif message.routing_key == "binding.created":
                    self._bound(headers)
            except Exception:
                log.exception("RabbitMQ event %s failed", message.routing_key)

    async def _created(self, headers: Mapping[str, Any]) -> None:
        if "mqtt" not in _text(headers.get("protocol")).lower():
            return
        name, username = _text(headers.get("name")), _text(headers.get("user"))
        if not name or not _ours(username):
            return  # the connector's own connections, and other internal users
        client_id = client_id_of(headers)
        if not client_id:  # ours, but not one we can keep honest: fail closed
            log.warning("closing MQTT connection %s of %s: its client id cannot be read", name, username)
            await self._start_kick(name, username, CloseReason.REVOKED)
            return
        await self._adopt(name, client_id, username, peer_ip(headers.get("peer_host")), recorded=False)

    async def _adopt(self, name: str, client_id: str, username: str, ip: str | None, *, recorded: bool) -> None:
        admitted = await self._admission(client_id, username)
        if admitted is None:
            # No replica can vouch for this connection's token (its expiry, its session): fail closed.
            log.warning("closing MQTT connection %s of %s: no admission known for it", name, client_id)
            await self._start_kick(name, username, CloseReason.REVOKED)
            return
        claims = admitted.claims()
        grants = await self.gate.grants(claims.sub, device=is_device_name(username), admin=claims.role == "admin")
        conn = Connection(client_id=client_id, username=username, claims=claims, grants=grants, ip=ip)
        conn.recorder = not recorded and await self.once.claim(f"created:{name}")
        self.book.add(name, conn)
        if self.events is not None:
            self.events.connected(conn)

    async def _admission(self, client_id: str, username: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ADMISSION_WAIT
        while True:
            found = await self.admissions.get(client_id, username)
            if found is not None or loop.time() >= deadline:
                return found
            await asyncio.sleep(0.1)

    async def _closed(self, headers: Mapping[str, Any]) -> None:
        name = _text(headers.get("name"))
        kick = self._kicks.pop(name, None)
        if kick is not None:
            kick.cancel()
        conn = self.book.pop(name)
        if conn is None:
            return
        reason = conn.close_reason or close_reason(await self.once.value(f"kick:{name}"))
        conn.recorder = await self.once.claim(f"closed:{name}")
        if self.events is not None:
            self.events.disconnected(conn, reason)

    def _bound(self, headers: Mapping[str, Any]) -> None:
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

            self._spawn(send_once())

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
        await self._start_kick(name, conn.username, reason)

    async def narrow(self, conn: Connection) -> None:
        # A binding once made keeps delivering: the connection goes, and its client reconnects with
        # only what it may still hold.
        await self.close(conn, CloseReason.REVOKED)

    def load_retained(self, topic: str, data: bytes) -> None:
        """RabbitMQ keeps retained messages itself (per node; desired state is re-sent on subscribe)."""

    async def _start_kick(self, name: str, username: str, reason: CloseReason) -> None:
        if name not in self._kicks and await self.once.claim(f"kick:{name}", reason.value):
            self._kicks[name] = asyncio.create_task(self._kick(name, username, reason))

    async def _kick(self, name: str, username: str, reason: CloseReason) -> None:
        """Until the connection is gone (its connection.closed cancels this task). By name where its
        username has other connections; by username where it is the only one (a device always is),
        or where the API cannot single it out in time."""
        attempt = 0
        while attempt < MAX_ATTEMPTS:
            try:
                alone = sum(1 for conn in self.book.live() if conn.username == username) <= 1
                if alone or attempt >= NAME_ATTEMPTS:
                    if not alone:
                        log.warning("cannot single out %s: closing every connection of %s", name, username)
                    await self.api.close_username(username, reason.value)
                else:
                    await self.api.close_connection(name, reason.value)
            except httpx.HTTPError as exc:
                if attempt == 0 or attempt % 10 == 0:
                    log.warning("cannot reach RabbitMQ's management API to close %s (%r); retrying", name, exc)
            await asyncio.sleep(KICK_RETRY[min(attempt, len(KICK_RETRY) - 1)])
            attempt += 1
        log.error("gave up closing MQTT connection %s of %s after %d attempts", name, username, attempt)
        self._kicks.pop(name, None)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ours(username: str) -> bool:
    return is_device_name(username) or bool(USER_ID.fullmatch(username))


def _amqp_from(mqtt_url: str) -> str:
    parts = urlsplit(mqtt_url)
    creds = f"{parts.username}:{parts.password}@" if parts.username else ""
    return f"amqp://{creds}{parts.hostname}:5672/"
