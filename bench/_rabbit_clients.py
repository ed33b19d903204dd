"""A minimal MQTT 3.1.1 client over asyncio streams, for bench/rabbitmq.py, storm.py and renewal.py: CONNECT/CONNACK, SUBSCRIBE/SUBACK,
PUBLISH (QoS 0 and 1, both ways, PUBACK sent and read), PINGREQ, DISCONNECT, and a socket dropped on purpose.
Thousands of them fit in one event loop, where paho would need a thread each. TCP_NODELAY on every socket
(PERF §5: Nagle turns a 1 ms request/response into 40-90 ms).

Return codes of CONNACK (MQTT 3.1.1 §3.2.2.3): 0 accepted, 1 bad protocol version, 2 client id rejected,
3 server unavailable, 4 bad username or password, 5 not authorized. Where no CONNACK comes, `connect` answers
a word instead: "timeout", "closed" (the broker closed the socket), or the OSError's name ("ConnectionRefusedError")."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
ACK_TIMEOUT = 10.0  # s for a SUBACK or a PUBACK
Handler = Callable[["MqttClient", str, bytes], Awaitable[None] | None]


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return bytes([CONNECT << 4]) + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False) -> bytes:
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([PUBLISH << 4 | qos << 1 | int(retain)]) + _length(len(body)) + body


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_string(f) + bytes([q]) for f, q in filters)
    return bytes([SUBSCRIBE << 4 | 0x02]) + _length(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(type, flags, body); asyncio.IncompleteReadError at EOF."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


@dataclass
class Outcome:
    """How one CONNECT went: the CONNACK's return code, or why there was none; and how long it took."""

    code: int | str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.code == 0


class MqttClient:
    """One connection. `connect` sends CONNECT and reads the CONNACK; `listen()` then starts a reader task
    that answers PUBLISH (QoS 1: PUBACK) through `on_message`, and notes SUBACKs, PUBACKs, PINGRESPs and the
    end of the connection (`closed`, an Event)."""

    def __init__(self, client_id: str, username: str | None, password: str | None, *, keepalive: int = 60) -> None:
        self.client_id = client_id
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.closed = asyncio.Event()
        self.closed_at: float | None = None  # loop time the broker's end of the connection was seen
        self.on_message: Handler | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[bytes]] = {}

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.closed.is_set()

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> Outcome:  # noqa: ASYNC109 - past it, the outcome "timeout"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.closed = asyncio.Event()
        self.closed_at = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
                self.reader, self.writer = reader, writer
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                writer.write(connect_packet(self.client_id, self.username, self.password, self.keepalive))
                kind, _, body = await read_packet(reader)
        except TimeoutError:
            self.drop()
            return Outcome("timeout", loop.time() - t0)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            self.drop()
            return Outcome("closed", loop.time() - t0)
        except OSError as exc:
            self.drop()
            return Outcome(type(exc).__name__, loop.time() - t0)
        if kind != CONNACK or len(body) < 2:
            self.drop()
            return Outcome(f"packet type {kind}", loop.time() - t0)
        code = body[1]
        if code != 0:
            self.drop()
        return Outcome(code, loop.time() - t0)

    def listen(self) -> None:
        if self._task is None and self.reader is not None:
            self._task = asyncio.create_task(self._read_loop(self.reader, self.closed))

    async def _read_loop(self, reader: asyncio.StreamReader, closed: asyncio.Event) -> None:
        try:
            while True:
                kind, flags, body = await read_packet(reader)
                if kind == PUBLISH:
                    await self._on_publish(flags, body)
                elif kind in (SUBACK, PUBACK):
                    (packet_id,) = struct.unpack("!H", body[:2])
                    waiter = self._waiting.pop(packet_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(body[2:])
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            self._mark_closed(closed)

    async def _on_publish(self, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        (size,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + size].decode()
        rest = body[2 + size :]
        if qos:
            packet_id, rest = rest[:2], rest[2:]
            self._write(bytes([PUBACK << 4, 2]) + packet_id)
        if self.on_message is not None:
            result = self.on_message(self, topic, rest)
            if result is not None:
                await result

    def _mark_closed(self, closed: asyncio.Event) -> None:
        """The end of one connection (its own Event: a later `connect` starts a new one)."""
        if not closed.is_set():
            if closed is self.closed:
                self.closed_at = asyncio.get_running_loop().time()
            closed.set()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection closed"))
        self._waiting.clear()

    def _write(self, data: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(data)

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """The SUBACK's return codes (0x80 = refused). The reader task must run (`listen`)."""
        packet_id = self._packet_id()
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[packet_id] = waiter
        self._write(subscribe_packet(packet_id, filters))
        async with asyncio.timeout(ACK_TIMEOUT):
            return list(await waiter)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Fire and forget (a QoS 1 PUBACK is read, not awaited)."""
        self._write(publish_packet(topic, payload, qos, self._packet_id() if qos else 0))

    async def publish_acked(self, topic: str, payload: bytes) -> bool:
        """QoS 1, and whether its PUBACK came within ACK_TIMEOUT (False: none, or the connection ended first).
        The reader task must run (`listen`)."""
        if not self.connected:
            return False
        packet_id = self._packet_id()
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[packet_id] = waiter
        self._write(publish_packet(topic, payload, 1, packet_id))
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                await waiter
        except (TimeoutError, ConnectionError):
            self._waiting.pop(packet_id, None)
            return False
        return True

    def ping(self) -> None:
        self._write(PINGREQ_PACKET)

    async def disconnect(self) -> None:
        """A clean DISCONNECT, then the socket closed."""
        self._write(DISCONNECT_PACKET)
        writer = self.writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), 2)
        self.drop(graceful=True)

    def drop(self, *, graceful: bool = False) -> None:
        """The socket closed without a DISCONNECT: what a device that loses its network looks like to the
        broker (its kernel still sends a FIN). `graceful`: after what was written has gone out."""
        writer, self.writer, self.reader = self.writer, None, None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if writer is not None:
            with contextlib.suppress(Exception):
                if graceful:
                    writer.close()
                else:
                    writer.transport.abort()


async def connect_disconnect(host: str, port: int, client_id: str, username: str, password: str) -> int | str:
    """One CONNECT, its CONNACK, and a DISCONNECT: the CONNACK's return code, or why none came."""
    client = MqttClient(client_id, username, password)
    outcome = await client.connect(host, port)
    if outcome.ok:
        await client.disconnect()
    return outcome.code


CONNACK_CODES = {"1": "bad protocol", "2": "id rejected", "3": "server unavailable", "4": "bad credentials",
                 "5": "not authorized"}  # fmt: skip


def codes_text(counts: Counter[str]) -> str:
    """Refusals by CONNACK return code (or the word `connect` answered), most frequent first, each named."""
    return ", ".join(
        f"{n}× {code}" + (f" ({CONNACK_CODES[code]})" if code in CONNACK_CODES else "")
        for code, n in counts.most_common()
    )
