"""The embedded broker: amqtt's Broker with the parts SPEC §6 needs done differently.

- A CONNECT is authenticated before it touches anything: a refused one never disconnects, wipes,
  resumes or alters the session of the client id it names, and its will is never stored.
- Subscriptions live in an index (exact topics in a dict, wildcards grouped per device) and a
  delivery walks a copy of the matches only: no loss when subscriptions change mid-broadcast.
- Authorization holds at delivery time: live messages, retained messages, the queue of a persistent
  session and wills all go only to clients whose current grants allow them.
- The server can close a connection for a reason (token expired, revoked, disabled, shutdown), and
  only an unexpected close publishes the will.

This is the one module that touches amqtt's private methods and attributes (amqtt is pinned to the
minor series the tests prove); the rest of the connector sees the broker port (device_connector.port)
through device_connector.broker.embedded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker, ListenerType, RetainedApplicationMessage
from amqtt.codecs_amqtt import read_or_raise
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import MQTTEvents
from amqtt.mqtt import connect as amqtt_connect
from amqtt.mqtt import packet_class
from amqtt.mqtt import publish as amqtt_publish
from amqtt.mqtt import subscribe as amqtt_subscribe
from amqtt.mqtt import unsubscribe as amqtt_unsubscribe
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.packet import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING, Session
from amqtt.utils import gen_client_id

from device_connector.acl import (
    USER_RENEWAL_TOPIC,
    Grants,
    may_publish,
    may_receive,
    may_retain,
    may_subscribe,
    payload_refusal,
    renews,
    valid_topic,
)
from device_connector.broker import lifecycle
from device_connector.broker.index import SubscriptionIndex, matches
from device_connector.port import NO_WILL, BrokerEvents, CloseReason, Connection, RefusedError

log = logging.getLogger("handshake.broker")


class NotUtf8Error(UnicodeError):
    """A string field (topic, client id...) that is not UTF-8: the connection is closed (MQTT-1.5.3-1).
    Not an MQTTError: amqtt's reader loop discards those and reads on."""


async def _strict_decode_string(reader: ReaderAdapter) -> str:
    # amqtt's decode_string turns invalid UTF-8 into str(bytes), "b'...'", and carries on.
    length = int.from_bytes(await read_or_raise(reader, 2), "big")
    data = await read_or_raise(reader, length) if length else b""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotUtf8Error("an MQTT string that is not UTF-8") from None
    if "\x00" in text:
        raise NotUtf8Error("an MQTT string with a NUL character (MQTT-1.5.3-2)")
    return text


def _install_strict_strings() -> None:
    """Only when an embedded broker is built: importing this module changes nothing in amqtt."""
    for module in (amqtt_connect, amqtt_publish, amqtt_subscribe, amqtt_unsubscribe):
        module.decode_string = _strict_decode_string


class _QuietStartFailure(logging.Filter):
    """amqtt logs a start that failed (a port taken, TLS files it cannot load) with its traceback; the
    embedded adapter says it in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Broker startup failed"


_QUIET_START_FAILURE = _QuietStartFailure()
CONNECT_TIMEOUT = 10.0
SET_UP_AT_ONCE = 8  # CONNECTs authenticated and set up concurrently (the rest wait their turn)
SWEEP_SLICE = 256  # ended sessions swept before the sweep lets the event loop run
TEAR_DOWN_AT_ONCE = 256  # connections a client ended whose close runs concurrently (the rest wait their turn)
ACCEPT_BACKLOG = 4096  # connections the kernel queues before accept(); it caps this at net.core.somaxconn
SHED_AFTER = 5.0  # s from a TCP connection after which a CONNECT still waiting for set-up is refused with 3
SERVER_UNAVAILABLE = 3  # CONNACK return code (MQTT 3.1.1 §3.2.2.3)
REDELIVER_AFTER = 5.0  # s without a PUBACK before a QoS 1 delivery is sent again (DUP)
TAKEOVER_WAIT = 3.0  # s a taken-over connection has to finish its close before it is marked closed
CLOSE_GRACE = 2.0  # s a closed connection has to take what is still buffered for it, then it is dropped
DENIED = 0x80


class PacketTooLargeError(Exception):
    pass


async def _refuse(writer: WriterAdapter, code: int) -> None:
    """A CONNACK with this return code, then the connection closed."""
    writer.write(ConnackPacket.build(0, code).to_bytes())
    with contextlib.suppress(Exception):
        await writer.drain()
    with contextlib.suppress(Exception):
        await writer.close()


class ClosingWriter(StreamWriterAdapter):  # type: ignore[misc]  # amqtt is untyped (no py.typed)
    """amqtt's writer, but a close gives the client CLOSE_GRACE seconds to take what is still buffered
    for it, and then drops the connection (the transport is aborted). amqtt's close waited until the
    buffer drained: a client closed because it reads nothing, and that kept its socket open, held the
    socket, its buffers and the reader's task for as long as it liked, after it had stopped counting
    towards its address's limit."""

    is_closed: bool

    async def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        writer = self._writer
        closed = False
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                writer.close()
                await writer.wait_closed()
            closed = True
        except (TimeoutError, OSError):
            pass
        finally:
            if not closed:
                writer.transport.abort()


class LimitedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt is untyped (no py.typed)
    """Refuses any packet larger than the limit: a client over it is disconnected (SPEC §6). amqtt
    parses a CONNECT (and SUBSCRIBE, UNSUBSCRIBE) field by field and never compares it with the
    remaining length its fixed header announced, so that length is checked here, for every packet."""

    def __init__(self, inner: ReaderAdapter, max_packet: int, closing: asyncio.Semaphore | None = None) -> None:
        self.inner = inner
        self.max_packet = max_packet
        self.conn: Connection | None = None  # set once the CONNECT is accepted
        self._left = 0  # bytes of the current packet's body not read yet
        self._header = bytearray()  # the fixed header being read
        self._closing = closing  # turns to close a connection its client ended
        self._has_turn = False
        self._closed = False

    def _too_large(self, n: int) -> PacketTooLargeError:
        if self.conn is not None:
            self.conn.close_reason = CloseReason.PROTOCOL_ERROR
        return PacketTooLargeError(n)

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.max_packet:
            raise self._too_large(n)
        try:
            data: bytes = await self.inner.read(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.wait_turn_to_close()
            raise
        if not data:
            await self.wait_turn_to_close()
            return data
        if self._left:
            self._left = max(0, self._left - len(data))
            return data
        self._header += data
        if len(self._header) >= 2 and not self._header[-1] & 0x80:
            length = sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(self._header[1:]))
            self._header.clear()
            if length > self.max_packet:
                raise self._too_large(length)
            self._left = length
        return data

    def feed_eof(self) -> None:
        self.inner.feed_eof()

    async def wait_turn_to_close(self) -> None:
        """The client ended an accepted connection: its close (the will, presence, the handler's tasks)
        waits for one of TEAR_DOWN_AT_ONCE turns. When 10,000 devices drop at once, their 10,000 closes
        would otherwise all run in the same few turns of the event loop, and every HTTP request waited
        behind them (issue 11: 4 s of a storm's first 5 were such turns). A close the broker starts
        itself (a takeover, a kick, a keep-alive timeout) cancels this wait and goes ahead. A DISCONNECT
        waits here too (`Handler.handle_disconnect`), and then its connection's end of stream: one turn
        serves both."""
        if self._closing is None or self.conn is None or self._has_turn or self._closed:
            return
        await self._closing.acquire()
        if self._has_turn or self._closed:  # the other wait got the turn, or the close ran without one
            self._closing.release()
        else:
            self._has_turn = True

    def closed(self) -> None:
        """The connection's close has run: its turn, if it had one, goes to the next."""
        self._closed = True
        if self._closing is not None and self._has_turn:
            self._has_turn = False
            self._closing.release()


class Handler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped (no py.typed)
    """amqtt's handler, but a silent client is disconnected after 1.5 × its keep-alive (MQTT-3.1.2-24),
    and a QoS 1 delivery is never given up on while its connection lives."""

    conn: Connection | None = None

    async def handle_disconnect(self, disconnect: DisconnectPacket | None) -> None:
        # A DISCONNECT waits for its turn to close as a dropped connection does (a fleet's clean
        # disconnects come in bursts too: a firmware update, a power cut with a graceful client).
        if disconnect is not None and isinstance(self.reader, LimitedReader):
            await self.reader.wait_turn_to_close()
        await super().handle_disconnect(disconnect)

    async def _reader_loop(self) -> None:
        """amqtt's reader loop, less a task for each PUBACK and each PUBLISH at QoS 0 or 1 (issue 11: a
        command and its reply are two such packets in): those are handled where they are read, in the
        order read (MQTT-4.6.0-2: PUBACKs in the order of their PUBLISHes). Every other packet is handled
        as amqtt does, in a task of its own, started in the order read; a CONNECT in place. The
        keep-alive bounds a packet's body and handling too, where amqtt bounded only the wait for its
        first byte."""
        session, ready = self.session, self._reader_ready
        if session is None or ready is None:
            raise AMQTTError("the reader started before its session")
        keep_alive = session.keep_alive if session.keep_alive and session.keep_alive > 0 else None
        loop = asyncio.get_running_loop()
        handling: deque[asyncio.Task[None]] = deque()
        while True:
            ready.set()
            while handling and handling[0].done():
                handling.popleft()
            deadline = asyncio.timeout(keep_alive)
            try:
                # Each fixed header is read in a task of its own, as amqtt reads it. Read in the reader's
                # own task, a PostgreSQL reconnect storm's p99 of GET /v1/users/me went from 46-64 ms
                # to 590-864 ms (5 runs of 6, bench.storm); the cause was not found.
                reading = asyncio.ensure_future(MQTTFixedHeader.from_stream(self.reader))
                # The keep-alive bounds the wait for a packet, as amqtt's did, and then, once its header
                # is in, a period of its own for its body and what is done with it here. A body that stops
                # coming, or a PUBACK that cannot be written because the client reads nothing, ends the
                # connection as silence does; a slow link's large packet after a quiet spell does not.
                async with deadline:
                    header = await reading
                    if not header:
                        break  # end of stream
                    if keep_alive is not None:
                        deadline.reschedule(loop.time() + keep_alive)
                    kind = header.packet_type
                    if kind in (RESERVED_0, RESERVED_15):
                        log.debug("%s sent a reserved packet type: closing", session.client_id)
                        await self.handle_connection_closed()
                        continue
                    packet = await packet_class(header).from_stream(self.reader, fixed_header=header)
                    await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=session)
                    if kind == PUBACK:
                        await self.handle_puback(packet)
                    elif kind == PUBLISH and packet.qos in (QOS_0, QOS_1):
                        # Its PUBACK sent and the message queued for the broker, in place: nothing in it
                        # waits for another packet (a QoS 2 flow waits for the PUBREL this loop reads).
                        await self.handle_publish(packet)
                    elif kind == CONNECT:
                        await self.handle_connect(packet)
                    elif (handle := _HANDLERS.get(kind)) is not None:
                        handling.append(asyncio.create_task(getattr(self, handle)(packet)))
            except asyncio.CancelledError:
                break
            except Exception as exc:
                if isinstance(exc, TimeoutError) or deadline.expired():
                    # The keep-alive ran out. Inside amqtt's writing of a PUBACK its cancel comes back as
                    # an error of amqtt's own (ProtocolHandlerError), not as TimeoutError.
                    self.handle_read_timeout()
                elif isinstance(exc, MQTTError | NoDataError):
                    log.debug("%s: a packet discarded: %r", session.client_id, exc)
                else:  # the connection ends; the broker goes on
                    log.info("%s: reading stopped: %r", session.client_id, exc)
                    break
        while handling:
            handling.popleft().cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    def handle_read_timeout(self) -> None:
        if self.conn is not None:
            self.conn.close_reason = CloseReason.KEEPALIVE_TIMEOUT
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def _handle_qos1_message_flow(self, message: Any) -> None:
        """An outgoing QoS 1 message is sent again, flagged DUP, every REDELIVER_AFTER seconds until its
        PUBACK comes; if the connection ends first it stays in flight, and a resumed persistent session
        gets it again (MQTT-4.4.0-1). amqtt's own flow waits 5 s, then drops it: SPEC §6 loses nothing
        accepted from a publisher. A subscriber that never acknowledges fills its window (MAX_INFLIGHT)
        and is disconnected."""
        if message.direction != OUTGOING:
            await super()._handle_qos1_message_flow(message)
            return
        session = self.session
        session.inflight_out[message.packet_id] = message
        while True:
            packet = message.build_publish_packet(dup=message.publish_packet is not None)
            await self._send_packet(packet)
            message.publish_packet = packet
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._puback_waiters[message.packet_id] = waiter
            try:
                async with asyncio.timeout(REDELIVER_AFTER):
                    message.puback_packet = await waiter
                break
            except TimeoutError:
                if not session.transitions.is_connected():
                    return  # kept in flight for the session
            finally:
                self._puback_waiters.pop(message.packet_id, None)
        session.inflight_out.pop(message.packet_id, None)


# The packets amqtt's reader hands to a task of their own, and the handler method of each.
_HANDLERS = {
    CONNACK: "handle_connack",
    SUBSCRIBE: "handle_subscribe",
    UNSUBSCRIBE: "handle_unsubscribe",
    SUBACK: "handle_suback",
    UNSUBACK: "handle_unsuback",
    PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel",
    PUBCOMP: "handle_pubcomp",
    PINGREQ: "handle_pingreq",
    PINGRESP: "handle_pingresp",
    PUBLISH: "handle_publish",
    DISCONNECT: "handle_disconnect",
}

# Authenticates a CONNECT from its fields (client id, username, password, will topic, peer address).
Admit = Callable[[Session], Awaitable[Connection]]


class HandshakeBroker(Broker):  # type: ignore[misc]  # amqtt is untyped (no py.typed)
    async def _create_server_instance(
        self, listener_name: str, listener_type: Any, address: str | None, port: int, ssl_context: Any
    ) -> Any:
        """amqtt's listener with an accept queue deep enough for a reconnect storm. asyncio's default
        (100) overflowed when hundreds of devices connected at once: the kernel dropped their SYNs, and
        each client waited out TCP's retransmission back-off (1, 3, 7, 15 s) before it was even accepted,
        so CONNECTs timed out that the broker never saw (issue 11)."""
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)
        return await asyncio.start_server(
            functools.partial(self.stream_connected, listener_name=listener_name),
            address,
            port,
            reuse_address=True,
            ssl=ssl_context,
            backlog=ACCEPT_BACKLOG,
        )

    def __init__(
        self,
        *,
        host: str,
        port: int | None,
        admit: Admit,
        max_packet: int,
        max_conn_per_ip: int = 0,
        max_inflight: int = 1000,
        max_queued: int = 10_000,
        ssl: dict[str, str] | None = None,
        tls_port: int = 8883,
    ) -> None:
        """Plain MQTT on `port` (None: none), and MQTT over TLS on `tls_port` when `ssl` names the
        certificate and key files (SPEC §10)."""
        listeners: dict[str, Any] = {}
        if port is not None:
            listeners["default"] = {"type": "tcp", "bind": f"{host}:{port}"}
        if ssl:
            # amqtt requires a listener named "default" and fills the others' unset fields from it.
            tls = {"type": "tcp", "bind": f"{host}:{tls_port}", "ssl": True, **ssl}
            listeners["tls" if listeners else "default"] = tls
        if not listeners:
            raise ValueError("a broker with no listener: give it a port, or TLS files and a TLS port")
        _install_strict_strings()
        lifecycle.install()
        if _QUIET_START_FAILURE not in logging.getLogger("amqtt.broker").filters:
            logging.getLogger("amqtt.broker").addFilter(_QUIET_START_FAILURE)
        super().__init__({"listeners": listeners, "plugins": {}})
        self.admit = admit
        self._setting_up = asyncio.Semaphore(SET_UP_AT_ONCE)
        self._closing = asyncio.Semaphore(TEAR_DOWN_AT_ONCE)
        self.shed = 0  # CONNECTs refused with 3 because set-up could not start in time
        self.max_packet = max_packet
        self.max_conn_per_ip = max_conn_per_ip
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.index = SubscriptionIndex()
        self.per_ip: dict[str, int] = {}
        # The connection record of each client id, live or a persistent session's last one.
        self.records: dict[str, Connection] = {}
        self.events: BrokerEvents | None = None

    # --- connections ------------------------------------------------------------------------------

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        await self._client_connected(listener_name, StreamReaderAdapter(reader), ClosingWriter(writer))

    async def _client_connected(self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter) -> None:
        server = self._servers.get(listener_name)
        if server is None:
            await writer.close()
            return
        peer = writer.get_peer_info()
        if peer is None:
            await writer.close()
            return
        ip = peer[0]
        accepted = asyncio.get_running_loop().time()
        if self.max_conn_per_ip and self.per_ip.get(ip, 0) >= self.max_conn_per_ip:
            await writer.close()
            return
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        await server.acquire_connection()
        limited = LimitedReader(reader, self.max_packet, self._closing)
        try:
            await self._serve(limited, writer, accepted)
        except Exception as exc:  # one client's trouble never takes the broker down
            log.info("connection from %s ended: %r", ip, exc)
            with contextlib.suppress(Exception):
                await writer.close()
        finally:
            limited.closed()
            server.release_connection()
            self.per_ip[ip] -= 1
            if not self.per_ip[ip]:
                del self.per_ip[ip]

    async def _serve(self, reader: ReaderAdapter, writer: WriterAdapter, accepted: float) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                handler, incoming = await Handler.init_from_connect(reader, writer, self.plugins_manager)
        except TimeoutError:
            # No whole CONNECT within CONNECT_TIMEOUT of the accept: a client that sent nothing, or one
            # whose CONNECT waited in a saturated event loop. "Server unavailable" (3) tells the second
            # to back off and come back (SPEC §6: under load a CONNECT is refused with 3), and costs
            # the first nothing.
            self.shed += 1
            await _refuse(writer, SERVER_UNAVAILABLE)
            return
        except (AMQTTError, MQTTError, NoDataError, PacketTooLargeError, ValueError, UnicodeError) as exc:
            log.debug("no valid CONNECT: %r", exc)
            await writer.close()
            return
        # A few CONNECTs set up at a time: in a reconnect storm thousands arrive together, and each one's
        # set-up is a run of callbacks on the event loop that every HTTP request would queue behind
        # (issue 11: p99 of GET /v1/users/me during a storm). Connects wait here instead, off the loop's
        # ready queue; the broker's throughput is the same, bound by the CPU either way.
        # A CONNECT that cannot start its set-up within SHED_AFTER of its TCP connection is answered
        # "server unavailable" (3) at once: its client backs off and comes back, where it would
        # otherwise wait out its own timeout and retry into the same queue (SPEC §6: under load a
        # CONNECT is refused with 3 and nothing else).
        try:
            async with asyncio.timeout(max(0.0, SHED_AFTER - (asyncio.get_running_loop().time() - accepted))):
                await self._setting_up.acquire()
        except TimeoutError:
            self.shed += 1
            await _refuse(writer, SERVER_UNAVAILABLE)
            return
        try:
            if not await self._set_up(handler, incoming, reader, writer):
                return
        finally:
            self._setting_up.release()
        await self._client_message_loop(handler.session, handler)

    async def _set_up(self, handler: Handler, incoming: Session, reader: ReaderAdapter, writer: WriterAdapter) -> bool:
        # Authenticate first: until this passes nothing below may touch an existing session.
        try:
            conn = await self.admit(incoming)
        except RefusedError as refusal:
            if self.events is not None:
                _safely(
                    self.events.refused,
                    client_id=incoming.client_id or "",
                    username=incoming.username,
                    ip=incoming.remote_address,
                    reason=refusal.reason,
                )
            await _refuse(writer, int(refusal.code))
            return False
        session = await self._adopt_session(incoming, conn)
        if isinstance(reader, LimitedReader):
            reader.conn = conn
        handler.conn = conn
        handler.attach(session, reader, writer)
        self._sessions[session.client_id] = (session, handler)
        await handler.mqtt_connack_authorize(True)
        if self.events is not None:
            _safely(self.events.connected, conn)
        await handler.start()
        await self._drain_session_queue(session, handler)
        await self._send_retained(self.index.granted_of(session.client_id), session, handler)
        return True

    async def _adopt_session(self, incoming: Session, conn: Connection) -> Session:
        """Now that the client is authenticated: clean start, resume, or take over (SPEC §6)."""
        client_id = incoming.client_id or gen_client_id()
        incoming.client_id = client_id
        existing = self._sessions.get(client_id)
        if existing is not None and existing[0].transitions.is_connected():
            await self.close_client(client_id, CloseReason.DUPLICATE_CLIENT_ID)
            await self._wait_disconnected(existing[0])
        if incoming.clean_session or existing is None:
            if existing is not None:
                await self._delete_session(client_id)
            session = incoming
            session.parent = 0
        else:
            session = existing[0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive"):
                setattr(session, name, getattr(incoming, name))
            session.username, session.password = incoming.username, None
            session.remote_address, session.remote_port = incoming.remote_address, incoming.remote_port
            session.parent = 1
        session.password = None  # the token is not kept past authentication
        self.records[client_id] = conn
        if session.keep_alive:
            session.keep_alive = int(session.keep_alive * 1.5 + 0.5)
        for topic_filter in self.index.filters_of(client_id):
            # A resumed session keeps only the subscriptions its client may still hold.
            if not may_subscribe(conn.grants, topic_filter):
                self.index.remove(topic_filter, client_id)
        with contextlib.suppress(Exception):
            session.transitions.connect()
        return session

    @staticmethod
    async def _wait_disconnected(session: Session) -> None:
        # The old connection's own task finishes its close (will, presence, handler) first.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TAKEOVER_WAIT):
                await session.transitions.wait_disconnected()
        if session.transitions.is_connected():
            with contextlib.suppress(Exception):
                session.transitions.disconnect()

    async def close_client(self, client_id: str, reason: CloseReason) -> bool:
        """Close a live connection for `reason`. A server-side close for a revocation or a disabled
        device publishes no will; an expired token counts as an unexpected close and does."""
        found = self._sessions.get(client_id)
        if found is None or not found[0].transitions.is_connected():
            return False
        session, handler = found
        conn = self.records.get(client_id)
        if conn is not None:
            conn.close_reason = reason
        if reason in NO_WILL or reason is CloseReason.DUPLICATE_CLIENT_ID:
            session.will_flag = False
        await handler.handle_connection_closed()
        return True

    async def _handle_disconnect(self, client_session: Session, handler: BrokerProtocolHandler, waiter: Any) -> None:
        result = waiter.result()
        conn = self.records.get(client_session.client_id)
        reason = conn.close_reason if conn is not None else None
        if not isinstance(result, DisconnectPacket):
            if client_session.will_flag and client_session.will_topic and conn is not None:
                # Authorized when published, not when it was stored at CONNECT: a role lost since
                # takes the will with it (SPEC §6).
                await self._publish_from(
                    client_session,
                    conn,
                    client_session.will_topic,
                    bytes(client_session.will_message or b""),
                    retain=bool(client_session.will_retain),
                    retain_qos=client_session.will_qos,
                    force_qos=client_session.will_qos,
                )
        await self._stop_handler(handler)
        with contextlib.suppress(Exception):
            client_session.transitions.disconnect()
        if client_session.clean_session:
            self.index.remove_client(client_session.client_id)
            if self.records.get(client_session.client_id) is conn:
                self.records.pop(client_session.client_id, None)
            # Gone at its own close, not at amqtt's next sweep (`_session_monitor`).
            found = self._sessions.get(client_session.client_id)
            if found is not None and found[0] is client_session:
                del self._sessions[client_session.client_id]
                client_session.clear_queues()
        if conn is not None and self.events is not None:
            _safely(self.events.disconnected, conn, reason or CloseReason.CLIENT_CLOSED)

    async def _session_monitor(self) -> None:
        """amqtt's sweep of ended clean sessions, every second, in slices. A clean session now leaves at
        its own close, so this finds only what slipped past that; amqtt's swept every ended session in one
        step, which after a storm's drop was thousands of them and a 100-ms turn of the event loop.
        (amqtt's expiry of persistent sessions is not configured here: they live until taken up again.)"""
        while True:
            ended = [
                client_id
                for client_id, (session, _) in list(self._sessions.items())
                if session.transitions.is_disconnected() and (session.is_anonymous or session.clean_session)
            ]
            for done, client_id in enumerate(ended, 1):
                found = self._sessions.get(client_id)
                if found is not None and found[0].transitions.is_disconnected():
                    await self._cleanup_session(client_id)
                if not done % SWEEP_SLICE:
                    await asyncio.sleep(0)
            await asyncio.sleep(1)

    def is_connected(self, client_id: str) -> bool:
        found = self._sessions.get(client_id)
        return found is not None and found[0].transitions.is_connected()

    def live(self) -> list[Connection]:
        return [
            conn
            for client_id, (session, _) in list(self._sessions.items())
            if session.transitions.is_connected() and (conn := self.records.get(client_id)) is not None
        ]

    def serving(self) -> bool:
        return str(self.transitions.state) == "started"

    async def shutdown(self) -> None:
        for conn in self.live():
            await self.close_client(conn.client_id, CloseReason.SERVER_SHUTDOWN)
        await super().shutdown()

    # --- subscriptions -----------------------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        levels = topic_filter.split("/")
        if (
            not valid_topic(topic_filter)
            or any("#" in level and (level != "#" or i != len(levels) - 1) for i, level in enumerate(levels))
            or any("+" in level and level != "+" for level in levels)
            or not may_subscribe(self._grants(session), topic_filter)
        ):
            return DENIED
        granted: int = min(qos, QOS_1)  # QoS 2 is granted as 1 (MQTT-3.8.4-6 allows a lower grant)
        self.index.add(topic_filter, session.client_id, session, granted)
        return granted

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        return int(self.index.remove(a_filter, session.client_id))

    async def _del_all_subscriptions(self, session: Session) -> None:
        self.index.remove_client(session.client_id)

    async def _handle_subscription(self, client_session: Session, handler: BrokerProtocolHandler, waiter: Any) -> None:
        subscriptions = waiter.result()
        codes = [await self.add_subscription(sub, client_session) for sub in subscriptions.topics]
        await handler.mqtt_acknowledge_subscription(subscriptions.packet_id, codes)
        granted = {f: code for (f, _), code in zip(subscriptions.topics, codes, strict=True) if code != DENIED}
        await self._send_retained(granted, client_session, handler)

    def revoke_subscriptions(self, conn: Connection) -> None:
        """Drop the subscriptions a client may no longer hold (its grants just changed)."""
        for topic_filter in self.index.filters_of(conn.client_id):
            if not may_subscribe(conn.grants, topic_filter):
                self.index.remove(topic_filter, conn.client_id)

    def _grants(self, session: Session) -> Grants:
        conn = self.records.get(session.client_id)
        return conn.grants if conn is not None else Grants()  # no record: nothing is allowed

    # --- messages ----------------------------------------------------------------------------------

    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, waiter: Any
    ) -> bool:
        message = waiter.result()
        if message is None:
            return True
        topic = message.topic
        if (
            not topic
            or not valid_topic(topic)
            or "#" in topic
            or "+" in topic
            or (topic.startswith("$") and topic != USER_RENEWAL_TOPIC)
        ):
            # Keep the loop running: it hears the close and finishes it like any other.
            await self.close_client(client_session.client_id, CloseReason.PROTOCOL_ERROR)
            return True
        conn = self.records.get(client_session.client_id)
        if conn is None:
            return True
        data = bytes(message.data or b"")
        retain = bool(message.publish_packet and message.publish_packet.retain_flag)
        await self._publish_from(client_session, conn, topic, data, retain=retain, retain_qos=message.qos)
        return True

    async def _publish_from(
        self,
        session: Session,
        conn: Connection,
        topic: str,
        data: bytes,
        *,
        retain: bool,
        retain_qos: int | None,
        force_qos: int | None = None,
    ) -> None:
        """A client's message (or its will), authorized now: by the grants the client has at this
        moment and by what it carries. The retain flag counts only on the state topics (SPEC §6)."""
        if not may_publish(conn.grants, topic):
            if self.events is not None:
                _safely(self.events.denied, conn, topic)
            return
        if renews(conn.grants, topic):
            # A fresh token for this connection (SPEC §12): for the connector to check, never delivered.
            if self.events is not None:
                _safely(self.events.published, conn, topic, data)
            return
        refusal = payload_refusal(topic, data)
        if refusal is not None:
            if self.events is not None:
                _safely(self.events.denied, conn, topic, reason=refusal)
            return
        await self._broadcast_message(session, topic, data, force_qos)
        if retain and may_retain(topic):
            await self.retain_message(session, topic, data, retain_qos)
        if self.events is not None:
            _safely(self.events.published, conn, topic, data)

    async def publish_internal(self, topic: str, data: bytes, *, qos: int = QOS_1, retain: bool = False) -> None:
        """A message from the platform itself (commands, desired state)."""
        await self._broadcast_message(None, topic, data, qos)
        if retain:
            await self.retain_message(None, topic, data, qos)

    async def _broadcast_message(
        self, session: Session | None, topic: str, data: bytes, force_qos: int | None = None
    ) -> None:
        """Delivered now, in the publisher's own turn. amqtt queues each message for a loop that starts a
        task and an `asyncio.wait` per message before it looks at the subscribers (issue 11: 6% of the
        event loop under HTTP commands, whose every command and reply passed that queue). The order of
        deliveries is still the order of publishes."""
        if self._broadcast_shutdown_waiter.done():
            log.debug("broker stopping: %s not delivered", topic)
            return
        broadcast: dict[str, Any] = {"session": session, "topic": topic, "data": data}
        if force_qos is not None:
            broadcast["qos"] = force_qos
        deliveries: deque[asyncio.Task[Any]] = self._tasks_queue
        while deliveries and deliveries[0].done():  # what amqtt's loop did before each message
            _retrieve(deliveries.popleft())
        await self._deliver(broadcast, deliveries)

    async def _run_broadcast(self, running_tasks: Any) -> None:
        """amqtt's loop, for anything put on its queue directly (nothing of ours does)."""
        await self._deliver(await self._broadcast_queue.get(), running_tasks)

    async def _deliver(self, broadcast: dict[str, Any], running_tasks: deque[asyncio.Task[Any]]) -> None:
        topic: str = broadcast["topic"]
        forced: int | None = broadcast.get("qos")
        for target, sub_qos in self.index.match(topic):
            # Delivery-time authorization: the grants as they are now, not as they were at SUBSCRIBE.
            conn = self.records.get(target.client_id)
            if conn is None or not may_receive(conn.grants, topic):
                continue
            qos = min(sub_qos if forced is None else forced, sub_qos)
            if not target.transitions.is_connected():
                if not target.clean_session and qos in (QOS_1, QOS_2):
                    message = RetainedApplicationMessage(broadcast["session"], topic, broadcast["data"], qos)
                    if target.retained_messages.qsize() >= self.max_queued:
                        target.retained_messages.get_nowait()  # bounded: the oldest queued message goes
                    await target.retained_messages.put(message)
                continue
            handler = self._get_handler(target)
            if handler is None:
                continue
            # A bounded window per client (SPEC §6): a subscriber that stops reading is disconnected
            # instead of piling up deliveries without end.
            if conn.pending_deliveries >= self.max_inflight:
                if conn.close_reason is None:
                    await self.close_client(target.client_id, CloseReason.PROTOCOL_ERROR)
                continue
            conn.pending_deliveries += 1
            task = asyncio.ensure_future(handler.mqtt_publish(topic, broadcast["data"], qos, retain=False))
            task.add_done_callback(lambda _, record=conn: _delivered(record))
            running_tasks.append(task)

    async def _drain_session_queue(self, session: Session, handler: BrokerProtocolHandler) -> None:
        """The queue of a resumed persistent session, each message checked against today's grants."""
        tasks = []
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            if may_receive(self._grants(session), queued.topic):
                tasks.append(
                    asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))
                )
        if tasks:
            await asyncio.wait(tasks)

    async def _send_retained(self, filters: dict[str, int], session: Session, handler: BrokerProtocolHandler) -> None:
        """The retained messages matching any of `filters` (filter -> granted QoS): each topic once, at
        the highest QoS of the filters it matches (MQTT 3.1.1 §3.3.5), however many of them overlap."""
        if not filters:
            return
        tasks = []
        grants = self._grants(session)
        for topic, retained in list(self._retained_messages.items()):
            granted = [qos for topic_filter, qos in filters.items() if matches(topic, topic_filter)]
            # Only state is ever retained, and only its device (or the connector) may publish it: the
            # publisher's right is the topic's own, checked again here for anything kept before.
            if granted and may_retain(topic) and may_receive(grants, topic):
                qos = max(granted)
                tasks.append(
                    asyncio.ensure_future(
                        handler.mqtt_publish(topic, retained.data, min(qos, retained.qos or qos), retain=True)
                    )
                )
        if tasks:
            await asyncio.wait(tasks)

    def retained(self, topic: str) -> bytes | None:
        found = self._retained_messages.get(topic)
        return bytes(found.data) if found is not None else None

    def load_retained(self, topic: str, data: bytes, qos: int = QOS_1) -> None:
        self._retained_messages[topic] = RetainedApplicationMessage(None, topic, data, qos)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A finished delivery's outcome, so that a failure is logged once and never as "never retrieved"."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("a delivery failed: %r", exc)


def _delivered(conn: Connection) -> None:
    conn.pending_deliveries = max(0, conn.pending_deliveries - 1)


def _safely(hook: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        hook(*args, **kwargs)
    except Exception:
        log.exception("broker event %r failed", hook)
