"""Reading the activity log back (SPEC §7) for admins: filters, newest first."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from account_manager import store
from shared.context import Context
from shared.errors import HandshakeError
from shared.events import Event
from shared.tokens import Claims

REVOCATION_CHECK = 1.0  # s: how often a quiet stream asks whether its reader may still read


async def list_events(
    ctx: Context,
    *,
    type: str | None,
    user_id: str | None,
    device_uid: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[Event], int]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # RFC 3339 without an offset: read it as UTC
    async with ctx.db.read() as tx:
        return await store.list_events(
            tx,
            type=type,
            user_id=user_id,
            device_uid=device_uid.upper() if device_uid else None,
            since=since,
            limit=limit,
            offset=offset,
        )


def _matches(event: Event, *, type: str | None, user_id: str | None, device_uid: str | None) -> bool:
    return (
        (type is None or event.type == type)
        and (user_id is None or event.actor_id == user_id)
        and (device_uid is None or event.device_uid == device_uid)
    )


def _frame(event: Event) -> bytes:
    # A batch summary (id 0) carries no id: a client resuming from it would replay from the start.
    head = f"id: {event.id}\n" if event.id else ""
    data = json.dumps(event.to_json(), separators=(",", ":"))
    return f"{head}event: {event.type}\ndata: {data}\n\n".encode()


async def stream_events(
    ctx: Context,
    *,
    claims: Claims,
    type: str | None,
    user_id: str | None,
    device_uid: str | None,
    last_event_id: int | None,
    keepalive: float = 15.0,
) -> AsyncIterator[bytes]:
    """Server-Sent Events: what was missed since Last-Event-ID first, then live events as they commit.
    The stream ends within REVOCATION_CHECK seconds of the reader's session being revoked (a logout,
    a disable and a role change all revoke it), or of revocation state becoming unconfirmed: checked
    before every event sent and every REVOCATION_CHECK seconds while none comes."""
    device_uid = device_uid.upper() if device_uid else None

    def still_allowed() -> bool:
        try:
            ctx.revocations.check(claims)
        except HandshakeError:
            return False
        return True

    async with ctx.events.listen() as queue:
        yield b"retry: 2000\n\n"
        if last_event_id is not None:
            async with ctx.db.read() as tx:
                missed = await store.events_after(tx, after=last_event_id, limit=500)
            for event in missed:
                if _matches(event, type=type, user_id=user_id, device_uid=device_uid) and still_allowed():
                    yield _frame(event)
        quiet_since = time.monotonic()
        while True:
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that lands as an event arrives.
                async with asyncio.timeout(min(keepalive, REVOCATION_CHECK)):
                    event = await queue.get()
            except TimeoutError:
                if not still_allowed():
                    return
                if time.monotonic() - quiet_since >= keepalive:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                continue
            if not still_allowed():
                return
            if _matches(event, type=type, user_id=user_id, device_uid=device_uid):
                quiet_since = time.monotonic()
                yield _frame(event)
