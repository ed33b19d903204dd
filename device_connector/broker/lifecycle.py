"""amqtt's session life cycle without a `transitions` state machine per session.

amqtt builds a `transitions.Machine` (states, five transitions, callbacks) for every session it makes:
a third of the broker's CPU per CONNECT+DISCONNECT on this machine (issue 11's profile), for three
states and two triggers. `SessionStates` answers the same calls amqtt and our broker make of
`session.transitions` (`state`, `connect()`, `disconnect()`, `is_connected()`, ...) with the same rules:
connect from new or disconnected, disconnect from anywhere, the session's enter callbacks on every
transition. Installed only when an embedded broker is built (importing this module changes nothing).
One addition: `wait_disconnected()`, for a takeover that waits for the old connection's close.

The states hold their session weakly. A reference back would make each session a cycle that only a full
garbage collection frees: a reconnect storm then left 10,000 dead sessions (16 objects each: queues,
events, deques) for the collector, and the memory they held set off a full pass in the middle of the
storm (1.6 s with the GIL held). Without the cycle a session is freed when its connection lets go."""

from __future__ import annotations

import asyncio
import weakref

from amqtt.session import Session
from transitions import MachineError

NEW, CONNECTED, DISCONNECTED = "new", "connected", "disconnected"
AMQTT_INIT_STATES = Session._init_states  # amqtt's own, kept: the tests hold ours to its behaviour


class SessionStates:
    __slots__ = ("_left", "_session", "state")

    def __init__(self, session: Session) -> None:
        self._session = weakref.ref(session)
        self.state = NEW
        self._left: asyncio.Event | None = None  # made only when someone waits: a CONNECT costs none

    def connect(self) -> bool:
        if self.state == CONNECTED:
            raise MachineError("Can't trigger event connect from state connected!")  # as transitions would
        self.state = CONNECTED
        session = self._session()
        if session is not None:
            session._on_enter_connected()
        return True

    def disconnect(self) -> bool:
        self.state = DISCONNECTED  # from new, connected or disconnected alike (amqtt's table)
        session = self._session()
        if session is not None:
            session._on_enter_disconnected()
        if self._left is not None:
            self._left.set()
            self._left = None
        return True

    async def wait_disconnected(self) -> None:
        """Until the session is no longer connected."""
        if self.state != CONNECTED:
            return
        if self._left is None:
            self._left = asyncio.Event()
        await self._left.wait()

    def is_new(self) -> bool:
        return self.state == NEW

    def is_connected(self) -> bool:
        return self.state == CONNECTED

    def is_disconnected(self) -> bool:
        return self.state == DISCONNECTED


def _init_states(session: Session) -> None:
    session.transitions = SessionStates(session)


def install() -> None:
    Session._init_states = _init_states
