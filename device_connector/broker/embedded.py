"""The embedded broker behind the broker port: amqtt (device_connector.broker.server) in this process.
It knows every connection itself, closes one by client id, and enforces a lost role by dropping the
subscriptions no longer allowed; delivery-time checks do the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from amqtt.errors import BrokerError
from amqtt.session import Session

from device_connector.broker.server import HandshakeBroker
from device_connector.gate import Gate
from device_connector.port import BrokerEvents, CloseReason, Connection
from shared import deadline
from shared.context import Context
from shared.errors import ConfigurationError

log = logging.getLogger("handshake.broker")
STOP_TIMEOUT = 5.0


class EmbeddedBroker:
    keeps_retained = True
    checks_payloads = True

    def __init__(self, ctx: Context) -> None:
        settings = ctx.settings
        self.backend_timeout = settings.backend_timeout
        ssl = None
        if settings.tls_cert and settings.tls_key:
            ssl = {"certfile": str(settings.tls_cert), "keyfile": str(settings.tls_key)}
        self.gate = Gate(ctx)
        self.server = HandshakeBroker(
            host=settings.mqtt_host,
            port=settings.mqtt_port if settings.mqtt_plain else None,
            tls_port=settings.mqtt_tls_port,
            admit=self._admit,
            max_packet=settings.mqtt_max_packet,
            max_conn_per_ip=settings.mqtt_max_conn_per_ip,
            max_inflight=settings.mqtt_max_inflight,
            max_queued=settings.mqtt_max_queued,
            ssl=ssl,
        )

    async def _admit(self, session: Session) -> Connection:
        client_id = session.client_id or ""
        with deadline.within(self.backend_timeout * 3):  # as an HTTP request has (SPEC §11)
            admission = await self.gate.admit(
                client_id=client_id,
                username=session.username,
                password=session.password,
                will_topic=session.will_topic if session.will_flag else None,
            )
        return Connection(
            client_id=client_id,
            username=session.username or "",
            claims=admission.claims,
            grants=admission.grants,
            ip=session.remote_address,
        )

    async def start(self, events: BrokerEvents) -> None:
        self.server.events = events
        try:
            await self.server.start()
        except BrokerError as exc:  # a port taken since `serve` checked it, TLS files it cannot use
            raise ConfigurationError(f"the MQTT broker cannot start: {exc.__cause__ or exc}") from None
        events.census(self.server.live())

    async def stop(self) -> None:
        # Bounded: amqtt's shutdown of a broker whose start a stop signal cut short can wait for a
        # state it never reaches, and a stop must end (SPEC §11: a shutdown within seconds).
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.server.shutdown()
        except TimeoutError:
            log.warning("the embedded MQTT broker did not shut down within %.0f s; stopping without it", STOP_TIMEOUT)

    def ready(self) -> bool:
        return self.server.serving()

    async def publish(self, topic: str, data: bytes, *, retain: bool = False) -> None:
        await self.server.publish_internal(topic, data, retain=retain)

    def is_online(self, client_id: str) -> bool:
        return self.server.is_connected(client_id)

    def connections(self) -> Iterable[Connection]:
        return self.server.live()

    async def close(self, conn: Connection, reason: CloseReason) -> None:
        if self.server.records.get(conn.client_id) is conn:
            await self.server.close_client(conn.client_id, reason)

    async def narrow(self, conn: Connection) -> None:
        self.server.revoke_subscriptions(conn)

    def load_retained(self, topic: str, data: bytes) -> None:
        self.server.load_retained(topic, data)

    async def renewed(self, conn: Connection) -> None:
        """The broker keeps no deadline of its own: the connector's sweep reads `conn.claims`."""
