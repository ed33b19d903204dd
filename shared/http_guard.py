"""uvicorn's HTTP/1.1 protocol (h11) with the bounds a server facing the open internet needs, which
uvicorn leaves out: a connection that has not sent a whole request head within HEADER_TIMEOUT, or a
body within BODY_TIMEOUT, is closed however slowly it trickles bytes (uvicorn times out only an idle
keep-alive connection, and no new connection that sends nothing or half a head); and the number of open
HTTP connections is capped below the process's file limit, so held-open connections can never take
the descriptors that MQTT, the database and the key files need. Past the cap a new connection evicts
the oldest one that has no request in progress; when every one is busy, the new one is closed.

The cap is set by `configure()` when `handshake serve` starts; a reverse proxy in front should bound
the same things itself (docs/operations.md)."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # s from a request's first byte (or the connection's opening) to its last header
BODY_TIMEOUT = 30.0  # s from the last header to the last byte of the body (at most 64 KiB)
# Descriptors kept out of the HTTP share: the database pool, Redis, keys, logs, the listeners.
_RESERVED = 256


def configure(*, share: float = 0.25) -> int:
    """Raise the file limit to what the system allows and give HTTP `share` of what is not reserved
    (MQTT connections keep the rest). Returns the HTTP connection cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    GuardedH11Protocol.max_connections = max(16, int((soft - _RESERVED) * share))
    return GuardedH11Protocol.max_connections


class GuardedH11Protocol(H11Protocol):
    max_connections = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_body = False
        self.opened_at = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened_at = time.monotonic()
        if len(self.connections) > self.max_connections and not self._evict_one():
            transport.abort()
            return
        self._arm(HEADER_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm(HEADER_TIMEOUT)  # the next request on a kept-alive connection starts now
        super().data_received(data)
        self._follow()

    # --- the read deadline ------------------------------------------------------------------------

    def _follow(self) -> None:
        """Move the deadline along with the request being read: head, then body, then none."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if not self._reading_body:
                self._arm(BODY_TIMEOUT)
                self._reading_body = True  # after _arm, which clears it: later chunks buy no more time
        elif state is not h11.IDLE:
            self._disarm()  # read whole (or the connection is done): the app has it now

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._reading_body = False

    def _timed_out(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.abort()

    # --- the connection cap -----------------------------------------------------------------------

    def _idle(self) -> bool:
        """No request of this connection is with the app (nothing read yet, half a head, kept alive)."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _evict_one(self) -> bool:
        oldest: GuardedH11Protocol | None = None
        for other in self.connections:
            if other is self or not isinstance(other, GuardedH11Protocol) or not other._idle():
                continue
            if oldest is None or other.opened_at < oldest.opened_at:
                oldest = other
        if oldest is None:
            return False
        oldest.transport.abort()
        return True
