"""One writer for what the broker records: presence, events and reported state. Entries queue here in
the order they happened and a single task commits them in batches, each batch one transaction of a
few multi-row statements: a reconnect storm of 10,000 devices is some forty transactions, not 40,000
statements, and a device's connect is never written after its disconnect. A presence change and its
event are in the same transaction (SPEC §11: complete or absent, with its event)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from device_connector import store
from shared import background
from shared.context import Context
from shared.db import Tx
from shared.errors import ServiceUnavailableError

log = logging.getLogger("handshake.journal")

# Entries in one transaction: a storm's backlog goes in large batches, each a handful of statements,
# so what bounds it is rows written, not round trips waited on. Not larger: preparing a batch's
# parameters runs on the event loop, and 5,000 rows held it for tens of milliseconds at a time.
MAX_BATCH = 1000
MAX_QUEUE = 100_000
# A batch the database cannot take is tried this many times, waiting BACKOFF * 2**attempt between
# (6.2 s in all): a database restart is ridden out. Once the journal stops it is not retried at all.
RETRIES = 5
LINGER = 0.05  # s between two writes at most: under load, an entry waits up to this for others
BACKOFF = 0.2
# How long a stop waits for what is queued to be written: the connector's part of a shutdown that
# ends within 5 s (SIGTERM: the HTTP server's graceful close comes first).
DRAIN_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class PresenceChange:
    uid: str
    online: bool
    at: datetime
    ip: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event row: ts, type, actor_type, actor_id, device_uid, ip, detail."""

    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reported:
    uid: str
    reported: Any
    at: datetime


# Anything else: a write of its own, run in order between the batched statements.
Write = Callable[[Tx], Awaitable[None]]
Entry = PresenceChange | NewEvent | Reported | Write


@dataclass
class _Statements:
    """Consecutive batchable entries, folded into the few statements that write them."""

    presence: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> the device row's values
    events: list[dict[str, Any]] = field(default_factory=list)
    reported: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, entry: PresenceChange | NewEvent | Reported) -> None:
        if isinstance(entry, NewEvent):
            self.events.append(entry.row)
        elif isinstance(entry, Reported):
            self.reported[entry.uid] = {"uid": entry.uid, "reported": entry.reported, "reported_at": entry.at}
        elif entry.online:
            self.presence[entry.uid] = {
                "device": entry.uid,
                "is_online": True,
                "since": entry.at,
                "now": entry.at,
                "address": entry.ip,
                "country": entry.region,
            }
        else:
            row = self.presence.setdefault(entry.uid, {"device": entry.uid})
            row["now"] = entry.at
            if "since" in row:  # connected earlier in this batch: keep when, from where
                row["is_online"] = False

    async def flush(self, ctx: Context, tx: Tx) -> None:
        if self.presence:
            rows = list(self.presence.values())
            await store.set_presence_many(
                tx,
                connected=[row for row in rows if "since" in row],
                disconnected=[row for row in rows if "since" not in row],
            )
            # Cached device lists show presence: they forget these devices (a lost message is bounded
            # by the lists' time to live, shared.device_lists.PRESENCE_TTL).
            ctx.revocations.changed_soon(tx, "device_row", list(self.presence))
        await store.put_reported_many(tx, list(self.reported.values()))
        await ctx.events.record_rows(tx, self.events)
        self.presence, self.events, self.reported = {}, [], {}


async def write_batched(ctx: Context, tx: Tx, entries: Iterable[PresenceChange | NewEvent | Reported]) -> None:
    """Entries folded into the few statements that write them, in `tx` (a write of its own that
    has such entries to add uses this too)."""
    pending = _Statements()
    for entry in entries:
        pending.add(entry)
    await pending.flush(ctx, tx)


class Journal:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize=MAX_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._abandoned = False  # stopping, and the database failed: what is queued is dropped
        self.dropped = 0

    def add(self, *entries: Entry) -> None:
        for entry in entries:
            try:
                self._queue.put_nowait(entry)
            except asyncio.QueueFull:
                self.dropped += 1  # bounded: past 100,000 pending entries, the newest are dropped and counted

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="handshake-journal")

    async def idle(self) -> None:
        """Until everything queued so far is written (or dropped)."""
        await self._queue.join()

    async def stop(self) -> None:
        """Write what is queued, for a bounded time, then stop. A write that fails once stopping is
        not retried: the database is away, and what is left is dropped (counted, and said in the log)
        rather than holding the shutdown up."""
        self._stopping.set()
        before = self.dropped
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.dropped += self._queue.qsize()
        if self.dropped > before:
            log.error(
                "journal stopped with %d entries unwritten: the database did not take them", self.dropped - before
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        written_at = -LINGER
        while True:
            batch = [await self._queue.get()]
            # Under load, let a batch gather: every transaction costs a few hops to the database's
            # thread (SQLite) or round trips, and each hop a hand-over of the GIL that stalls the event
            # loop; at a command's pace a batch would otherwise be one or two entries (issue 11). A
            # journal that wrote nothing for LINGER writes at once: a quiet fleet's presence (what
            # GET /v1/devices/{uid} shows right after a connect) waits for nothing.
            since = loop.time() - written_at
            if since < LINGER:
                await asyncio.sleep(LINGER - since)
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if self._abandoned:
                self.dropped += len(batch)
            else:
                await self._commit(batch)
            written_at = loop.time()
            for _ in batch:
                self._queue.task_done()
            background.honour_cancel()

    async def _commit(self, batch: list[Entry]) -> None:
        for attempt in range(RETRIES):
            try:
                await self._write(batch)
                return
            except (ServiceUnavailableError, OSError) as exc:  # the database is away: wait for it
                if self._stopping.is_set():
                    self._abandoned = True
                    self.dropped += len(batch)
                    log.warning("journal write failed while stopping (%r): not retried", exc)
                    return
                log.warning("journal write of %d entries failed (%r); retrying", len(batch), exc)
                with contextlib.suppress(TimeoutError):  # a stop ends the wait
                    async with asyncio.timeout(BACKOFF * 2**attempt):
                        await self._stopping.wait()
            except sa.exc.SQLAlchemyError as exc:
                # An entry the database refuses (its device was deleted meanwhile, say) must not take
                # the rest of the batch with it: write them one by one, and drop only what fails.
                if len(batch) == 1:
                    log.error("journal dropped an entry the database refused: %r", exc)
                    return
                for entry in batch:
                    await self._commit([entry])
                return
        self.dropped += len(batch)
        log.error("journal dropped %d entries after retries", len(batch))

    async def _write(self, batch: list[Entry]) -> None:
        async with self.ctx.db.write() as tx:
            pending = _Statements()
            for entry in batch:
                if isinstance(entry, PresenceChange | NewEvent | Reported):
                    pending.add(entry)
                else:
                    await pending.flush(self.ctx, tx)
                    await entry(tx)
            await pending.flush(self.ctx, tx)
