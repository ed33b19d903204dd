"""The SQL of the shared package: the revocation records and the event log. Statements are built once
(every login, bind and connect writes an event, and building a statement costs more than running it);
callers own the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from shared import tables
from shared.clock import version_of
from shared.db import Tx

# --- revocations -------------------------------------------------------------------------------------

# What a reconciliation pass reads: (kind, id, version) of sessions and tokens revoked since `since`, of every
# disabled device, and of the rows per-process caches keep that changed since `caches_since`.
_CHANGES = sa.union_all(
    sa.select(
        sa.literal("sid").label("kind"),
        tables.sessions.c.id.label("id"),
        sa.cast(sa.null(), tables.UTCDateTime).label("at"),
    ).where(tables.sessions.c.revoked_at >= sa.bindparam("since")),
    sa.select(sa.literal("jti"), tables.revoked_tokens.c.jti, sa.null()).where(
        tables.revoked_tokens.c.revoked_at >= sa.bindparam("since")
    ),
    sa.select(sa.literal("device"), tables.devices.c.uid, sa.null()).where(tables.devices.c.disabled.is_(True)),
    # Users changed, with the version their row has now: what per-process caches of user rows must
    # forget, unless they hold that version (shared.cache).
    sa.select(sa.literal("user"), tables.users.c.id, tables.users.c.updated_at).where(
        tables.users.c.updated_at >= sa.bindparam("caches_since")
    ),
    # Devices whose listing or membership changed, and who holds a role on them now: what the
    # per-process device lists must forget (shared.device_lists).
    sa.select(sa.literal("device_row"), tables.devices.c.uid, sa.null()).where(
        tables.devices.c.changed_at >= sa.bindparam("caches_since")
    ),
    sa.select(sa.literal("members"), tables.devices.c.owner_id, sa.null()).where(
        tables.devices.c.changed_at >= sa.bindparam("caches_since"), tables.devices.c.owner_id.is_not(None)
    ),
    sa.select(sa.literal("members"), tables.device_shares.c.user_id, sa.null())
    .join(tables.devices, tables.devices.c.uid == tables.device_shares.c.uid)
    .where(tables.devices.c.changed_at >= sa.bindparam("caches_since")),
)
_JTI_REVOKED = sa.select(tables.revoked_tokens.c.jti).where(tables.revoked_tokens.c.jti == sa.bindparam("jti"))


async def revocation_changes(tx: Tx, *, since: datetime, caches_since: datetime) -> list[tuple[str, str, int | None]]:
    """(kind, id, version) triples, in one statement: one round trip, one snapshot. The version is a
    user row's (shared.cache.version_of), None for the other kinds."""
    rows = await tx.execute(_CHANGES, {"since": since, "caches_since": caches_since})
    return [(str(kind), str(id_), None if at is None else version_of(at)) for kind, id_, at in rows]


async def mark_sessions_revoked(tx: Tx, sids: Sequence[str], *, reason: str, now: datetime) -> None:
    await tx.execute(
        sa.update(tables.sessions)
        .where(tables.sessions.c.id.in_(sids), tables.sessions.c.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason=reason)
    )


async def record_revoked_jti(tx: Tx, jti: str, *, now: datetime, expires_at: datetime) -> None:
    if (await tx.execute(_JTI_REVOKED, {"jti": jti})).first() is None:
        await tx.execute(sa.insert(tables.revoked_tokens).values(jti=jti, revoked_at=now, expires_at=expires_at))


# --- the event log -----------------------------------------------------------------------------------


class EventRow(NamedTuple):
    id: int
    ts: datetime
    type: str
    actor_type: str
    actor_id: str | None
    device_uid: str | None
    ip: str | None
    detail: dict[str, Any] | None


_INSERT_EVENT = sa.insert(tables.events).returning(tables.events.c.id)
# PostgreSQL: many rows in one statement (SQLAlchemy's "insertmanyvalues"), ids back in the rows' order.
_INSERT_EVENTS = sa.insert(tables.events).returning(tables.events.c.id, sort_by_parameter_order=True)
_LAST_EVENT_ID = sa.select(sa.func.coalesce(sa.func.max(tables.events.c.id), 0))
_NEWER_EVENTS = (
    sa.select(
        tables.events.c.id,
        tables.events.c.ts,
        tables.events.c.type,
        tables.events.c.actor_type,
        tables.events.c.actor_id,
        tables.events.c.device_uid,
        tables.events.c.ip,
        tables.events.c.detail,
    )
    .where(tables.events.c.id > sa.bindparam("after"), tables.events.c.type.in_(sa.bindparam("types", expanding=True)))
    .order_by(tables.events.c.id)
    .limit(500)
)


async def insert_event(tx: Tx, row: dict[str, Any]) -> int:
    return int((await tx.execute(_INSERT_EVENT, row)).scalar_one())


async def insert_events(tx: Tx, rows: list[dict[str, Any]], *, ids: bool = True) -> list[int]:
    """Rows in one statement; their ids in the rows' order (none asked with `ids=False`)."""
    if not ids:
        await tx.execute(sa.insert(tables.events), rows)
        return []
    if tx.conn.dialect.name != "sqlite":
        return [int(id_) for id_ in (await tx.execute(_INSERT_EVENTS, rows)).scalars()]
    # SQLAlchemy cannot return SQLite's ids in the rows' order from one statement: it would send one
    # INSERT per row, each a hop to the database's thread, and under load each hop waits a turn of the
    # event loop (a journal batch of 1,000 events took 6 s behind HTTPS commands, and fell behind for
    # good). The ids SQLite would choose, one past the largest, are given here, and the rows go in one
    # multi-row INSERT (shared.db): SQLite has a single writer, and a transaction that read the largest
    # id before another wrote cannot write at all (SQLITE_BUSY_SNAPSHOT), so no two take the same ids.
    first = int((await tx.execute(_LAST_EVENT_ID)).scalar_one()) + 1
    await tx.execute(sa.insert(tables.events), [{**row, "id": first + i} for i, row in enumerate(rows)])
    return list(range(first, first + len(rows)))


async def last_event_id(tx: Tx) -> int:
    return int((await tx.execute(_LAST_EVENT_ID)).scalar_one())


async def events_after(tx: Tx, *, after: int, types: Iterable[str]) -> list[EventRow]:
    """Up to 500 events of `types` newer than `after`, oldest first."""
    rows = await tx.execute(_NEWER_EVENTS, {"after": after, "types": sorted(types)})
    return [EventRow._make(row) for row in rows]  # the statement selects the fields in this order
