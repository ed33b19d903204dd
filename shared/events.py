"""Activity events (SPEC §7): one table, one stream. An event is written in the same transaction as the
change it records and fanned out to live listeners only once that transaction has committed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import background, store
from shared.db import Database, Tx
from shared.fanout import Fanout
from shared.models import ActorType, EventType

CHANNEL = "events"
log = logging.getLogger("handshake.events")
# The events the command line writes, from a process of its own (see EventLog.follow_database).
FROM_COMMANDS = (EventType.USER_CREATED, EventType.KEY_ROTATED, EventType.KEY_REVOKED)
_FROM_COMMANDS = frozenset(str(t) for t in FROM_COMMANDS)


@dataclass(frozen=True)
class Event:
    id: int
    ts: datetime
    type: str
    actor_type: str
    actor_id: str | None
    device_uid: str | None = None
    ip: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies `detail`, on the path of every event.
        return {
            "id": self.id,
            "ts": self.ts.isoformat().replace("+00:00", "Z"),
            "type": self.type,
            "actor_type": self.actor_type,
            "actor_id": self.actor_id,
            "device_uid": self.device_uid,
            "ip": self.ip,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(**{**data, "ts": datetime.fromisoformat(data["ts"].replace("Z", "+00:00"))})


def event_row(
    type: EventType,
    *,
    actor_type: ActorType,
    actor_id: str | None,
    device_uid: str | None = None,
    ip: str | None = None,
    detail: dict[str, Any] | None = None,
    ts: datetime | None = None,
) -> dict[str, Any]:
    """An event as the row that stores it; `ts` when it happened (now if not given)."""
    return {
        "ts": ts or datetime.now(UTC),
        "type": str(type),
        "actor_type": str(actor_type),
        "actor_id": actor_id,
        "device_uid": device_uid,
        "ip": ip,
        "detail": detail or {},
    }


class EventLog:
    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self._queues: set[asyncio.Queue[Event]] = set()
        self._delivered: dict[int, float] | None = None  # id -> when, while following the database
        fanout.subscribe(CHANNEL, self._on_message)

    async def record(
        self,
        tx: Tx,
        type: EventType,
        *,
        actor_type: ActorType,
        actor_id: str | None,
        device_uid: str | None = None,
        ip: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        values = event_row(type, actor_type=actor_type, actor_id=actor_id, device_uid=device_uid, ip=ip, detail=detail)
        event = Event(id=await store.insert_event(tx, values), **values)
        tx.after_commit(lambda: self._publish(event))

    async def record_many(
        self,
        tx: Tx,
        type: EventType,
        *,
        actor_type: ActorType,
        actor_id: str | None,
        items: list[tuple[str | None, dict[str, Any]]],
        ip: str | None = None,
    ) -> None:
        """One event per (device_uid, detail), in one statement: a batch of 1000 stays one round trip."""
        if not items:
            return
        ts = datetime.now(UTC)
        rows = [
            event_row(type, actor_type=actor_type, actor_id=actor_id, device_uid=uid, ip=ip, detail=detail, ts=ts)
            for uid, detail in items
        ]
        await store.insert_events(tx, rows, ids=False)
        summary = Event(0, ts, str(type), str(actor_type), actor_id, None, ip, {"count": len(rows)})
        tx.after_commit(lambda: self._publish(summary))

    async def record_rows(self, tx: Tx, rows: list[dict[str, Any]]) -> None:
        """Events already shaped as rows (`ts`, `type`, `actor_type`, `actor_id`, `device_uid`, `ip`,
        `detail`), in one multi-row INSERT; each is published once the transaction commits."""
        if not rows:
            return
        ids = await store.insert_events(tx, rows)
        events = [Event(id=id_, **row) for id_, row in zip(ids, rows, strict=True)]
        tx.after_commit(lambda: self._publish_many(events))

    async def _publish_many(self, events: list[Event]) -> None:
        with contextlib.suppress(Exception):
            await self.fanout.publish_many(CHANNEL, [event.to_json() for event in events])

    async def _publish(self, event: Event) -> None:
        with contextlib.suppress(Exception):
            # The event is in the database already; a live listener that misses it can read it there.
            await self.fanout.publish(CHANNEL, event.to_json())

    def _on_message(self, message: dict[str, Any]) -> None:
        try:
            event = Event.from_json(message)
        except (KeyError, TypeError, ValueError):
            return
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        if self._delivered is not None and event.type in _FROM_COMMANDS:  # (only those are read back)
            if event.id in self._delivered:
                return  # read from the database already (follow_database), or the other way round
            self._delivered[event.id] = time.monotonic()
        for queue in list(self._queues):
            if queue.full():
                # A listener that cannot keep up loses its oldest events, never blocks the others.
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def follow_database(self, db: Database, *, interval: float = 1.0) -> None:
        """Without Redis nothing carries events between processes: what the command line wrote from
        a process of its own (`keys rotate`, `keys revoke`, `users create`: FROM_COMMANDS) reaches this
        process's live listeners by reading new rows of those types, each event delivered once."""
        self._delivered = {}
        last: int | None = None
        while True:
            try:
                async with db.query() as tx:
                    if last is None:
                        last = await store.last_event_id(tx)
                    else:
                        rows = await store.events_after(tx, after=last, types=_FROM_COMMANDS)
                        for row in rows:
                            self._deliver(event_from_row(row))
                            last = max(last, int(row.id))
            except Exception as exc:
                log.debug("could not read new events: %r", exc)
            background.honour_cancel()
            cutoff = time.monotonic() - 60
            self._delivered = {id_: at for id_, at in self._delivered.items() if at > cutoff}
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def listen(self, maxsize: int = 1000) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


def event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        ts=row.ts,
        type=row.type,
        actor_type=row.actor_type,
        actor_id=row.actor_id,
        device_uid=row.device_uid,
        ip=row.ip,
        detail=row.detail or {},
    )
