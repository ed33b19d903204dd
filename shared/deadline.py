"""One budget per request for its backend calls (SPEC §11: each call to a backend times out in about
`backend_timeout`, so no request waits more than a few seconds, whatever a database that accepts
connections and answers nothing does). The budget counts the time spent in backend calls only (a
login's password hash or a provisioning batch's claim-code hashes are not waits on a backend). It lives
in a context variable: given when a request (or an MQTT CONNECT) starts, drawn on by shared.db for each
transaction, and dropped once the response has started (what a stream does later is not that
request's wait)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass
class _Budget:
    left: float


_budget: ContextVar[_Budget | None] = ContextVar("handshake_backend_budget", default=None)


def budget(cap: float) -> float | None:
    """Seconds the next backend call may take: `cap`, or what is left of the request's budget if that
    is less (0 once it is spent); None outside a request."""
    found = _budget.get()
    return None if found is None else max(0.0, min(cap, found.left))


@contextlib.contextmanager
def spending() -> Iterator[None]:
    """Charge the time spent inside to the current budget (if any)."""
    started = time.monotonic()
    try:
        yield
    finally:
        found = _budget.get()
        if found is not None:
            found.left -= time.monotonic() - started


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    token = _budget.set(_Budget(seconds))
    try:
        yield
    finally:
        _budget.reset(token)


class RequestDeadline:
    """A pure ASGI middleware: every HTTP request gets `seconds` of backend calls."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                _budget.set(None)  # a streamed body (the event stream) reads on its own time
            await send(message)

        with within(self.seconds):
            await self.app(scope, receive, sending)
