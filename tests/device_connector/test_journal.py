"""The connector's journal (presence, events and reported state written in batches of multi-row
statements), on the real database of each backend: what a batch writes is what the entries said, in
their order, and an entry the database refuses loses only itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from device_connector.journal import Journal, NewEvent, PresenceChange, Reported
from device_manager.provisioning import provision
from shared import tables
from shared.context import Context
from shared.db import Tx
from shared.events import event_row
from shared.models import ActorType, EventType
from tests.conftest import statements


async def devices_row(ctx: Context, uid: str) -> Any:
    async with ctx.db.read() as tx:
        return (await tx.execute(sa.select(tables.devices).where(tables.devices.c.uid == uid))).one()


async def reported(ctx: Context, uid: str) -> Any:
    async with ctx.db.read() as tx:
        state = tables.device_state
        return (await tx.execute(sa.select(state.c.reported).where(state.c.uid == uid))).scalar_one_or_none()


def connected(uid: str, at: datetime) -> NewEvent:
    return NewEvent(
        event_row(EventType.DEVICE_CONNECTED, actor_type=ActorType.DEVICE, actor_id=uid, device_uid=uid, ts=at)
    )


async def test_a_batch_writes_what_its_entries_say_in_order(ctx: Context) -> None:
    made = await provision(ctx, model="journal-test", count=4, actor_id=None, ip=None)
    stays, leaves, only_leaves, comes_back = (p.uid for p in made)
    t0 = datetime.now(UTC).replace(microsecond=0)
    at = [t0 + timedelta(seconds=i) for i in range(10)]
    written: list[str] = []

    async def between(tx: Tx) -> None:  # a write of its own, between batched statements
        written.append("between")

    journal = Journal(ctx)
    journal.add(
        PresenceChange(stays, True, at[0], "10.0.0.1", "DE"),
        connected(stays, at[0]),
        PresenceChange(leaves, True, at[1], "10.0.0.2", "FR"),
        PresenceChange(leaves, False, at[2]),
        PresenceChange(only_leaves, False, at[3]),
        PresenceChange(comes_back, False, at[4]),
        between,
        PresenceChange(comes_back, True, at[5], "10.0.0.4", None),
        Reported(stays, {"n": 1}, at[6]),
        Reported(stays, {"n": 2}, at[7]),
        Reported(leaves, {"n": 9}, at[7]),
    )
    await journal.start()
    await journal.stop()

    row = await devices_row(ctx, stays)
    assert (row.online, row.ip, row.region, row.connected_at, row.last_seen) == (True, "10.0.0.1", "DE", at[0], at[0])
    row = await devices_row(ctx, leaves)
    assert (row.online, row.ip, row.region, row.connected_at, row.last_seen) == (False, "10.0.0.2", "FR", at[1], at[2])
    row = await devices_row(ctx, only_leaves)
    assert (row.online, row.ip, row.connected_at, row.last_seen) == (False, None, None, at[3])
    row = await devices_row(ctx, comes_back)
    assert (row.online, row.ip, row.connected_at, row.last_seen) == (True, "10.0.0.4", at[5], at[5])
    assert await reported(ctx, stays) == {"n": 2}  # the later report wins
    assert await reported(ctx, leaves) == {"n": 9}
    assert written == ["between"]

    async with ctx.db.read() as tx:
        events = tables.events
        found = (await tx.execute(sa.select(events).where(events.c.actor_id == stays))).all()
    assert [(e.type, e.ts) for e in found] == [("device_connected", at[0])]  # stamped when it happened


async def test_many_events_keep_their_order_and_reach_live_listeners(ctx: Context) -> None:
    (device,) = await provision(ctx, model="journal-test", count=1, actor_id=None, ip=None)
    t0 = datetime.now(UTC)
    entries = [connected(device.uid, t0 + timedelta(milliseconds=i)) for i in range(1200)]  # three batches
    journal = Journal(ctx)
    async with ctx.events.listen(maxsize=5000) as live:
        journal.add(*entries)
        await journal.start()
        await journal.stop()
        heard = [live.get_nowait() for _ in range(live.qsize())]
    mine = [e for e in heard if e.actor_id == device.uid]
    assert len(mine) == 1200
    assert [e.ts for e in mine] == [entry.row["ts"] for entry in entries]
    assert [e.id for e in mine] == sorted(e.id for e in mine) and len({e.id for e in mine}) == 1200
    async with ctx.db.read() as tx:
        events = tables.events
        query = sa.select(events.c.id).where(events.c.actor_id == device.uid)
        ids = (await tx.execute(query)).scalars().all()
    assert sorted(ids) == [e.id for e in mine]


async def test_a_batch_of_events_is_one_insert_not_one_per_event(ctx: Context) -> None:
    """On SQLite every statement is a hop to the database's thread, and under load each hop waits a turn
    of the event loop: a batch written row by row fell behind HTTPS commands for good (issue 11). Nor
    an executemany: SQLite runs it a row at a time, handing the GIL over for each."""
    (device,) = await provision(ctx, model="journal-test", count=1, actor_id=None, ip=None)
    t0 = datetime.now(UTC)
    with statements(ctx, loops=True) as sent:
        journal = Journal(ctx)
        journal.add(*(connected(device.uid, t0 + timedelta(milliseconds=i)) for i in range(500)))
        await journal.start()
        await journal.stop()
    values = []  # how many values each INSERT carries: all of the rows' at once, or one row's
    for statement, parameters in sent:
        if statement.lstrip().upper().startswith("INSERT INTO EVENTS"):
            # An executemany's parameters are a sequence of rows; a multi-row statement's, one flat sequence.
            rows = parameters if parameters and isinstance(parameters[0], (tuple, list, dict)) else [parameters]
            values.append(max(len(row) for row in rows))
    assert len(values) == 1, f"{len(values)} INSERTs for one batch of 500 events"
    assert values[0] >= 500 * 7, "the rows were sent one at a time (an executemany)"
    assert len(sent) <= 5, [statement for statement, _ in sent]  # BEGIN, (SQLite: the largest id,) INSERT, COMMIT
    async with ctx.db.read() as tx:
        events = tables.events
        query = sa.select(events.c.id, events.c.ts).where(events.c.actor_id == device.uid).order_by(events.c.id)
        rows = (await tx.execute(query)).all()
    assert [row.ts for row in rows] == [t0 + timedelta(milliseconds=i) for i in range(500)]


async def test_an_entry_the_database_refuses_loses_only_itself(ctx: Context) -> None:
    (device,) = await provision(ctx, model="journal-test", count=1, actor_id=None, ip=None)
    at = datetime.now(UTC)
    journal = Journal(ctx)
    journal.add(
        PresenceChange(device.uid, True, at, "10.0.0.9", None),
        Reported("NOSUCHDEVICE00000000", {"x": 1}, at),  # no such device: the foreign key refuses it
        Reported(device.uid, {"ok": True}, at),
    )
    await journal.start()
    await journal.stop()
    assert (await devices_row(ctx, device.uid)).online is True
    assert await reported(ctx, device.uid) == {"ok": True}
    assert await reported(ctx, "NOSUCHDEVICE00000000") is None
