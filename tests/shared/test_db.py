"""Storage (shared.db, shared.sqlite): writes are atomic, `query()` runs one statement outside a
transaction, and on SQLite every statement is one hop to the connection's thread, never run on the
event loop's own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from shared import tables
from shared.context import Context
from shared.db import Database, Tx
from tests.conftest import Backend, make_settings

revoked = tables.revoked_tokens
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def row(jti: str) -> dict[str, Any]:
    return {"jti": jti, "revoked_at": NOW, "expires_at": NOW + timedelta(hours=1)}


async def jtis(tx: Tx) -> list[str]:
    return list((await tx.execute(sa.select(revoked.c.jti).order_by(revoked.c.jti))).scalars())


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[object, str]]]:
    """Every call aiosqlite hands to a connection's thread: (connection, the function's name). The
    app's own background work (the revocation view re-reads every second) has connections too."""
    seen: list[tuple[object, str]] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((self, getattr(fn, "__name__", repr(fn))))
        return await original(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    yield seen


async def driver_of(tx: Tx) -> Any:
    return (await tx.conn.get_raw_connection()).driver_connection


async def test_a_write_commits_all_of_its_statements(ctx: Context) -> None:
    async with ctx.db.write() as tx:
        await tx.execute(sa.insert(revoked), [row("a"), row("b")])
        await tx.execute(sa.insert(revoked), row("c"))
    async with ctx.db.read() as tx:
        assert await jtis(tx) == ["a", "b", "c"]


async def test_a_write_that_fails_leaves_nothing_behind(ctx: Context) -> None:
    with pytest.raises(RuntimeError):
        async with ctx.db.write() as tx:
            await tx.execute(sa.insert(revoked), row("a"))
            raise RuntimeError("the second half of the change failed")
    async with ctx.db.read() as tx:
        assert await jtis(tx) == []


async def test_a_unique_violation_is_an_integrity_error_and_rolls_back(ctx: Context) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        async with ctx.db.write() as tx:
            await tx.execute(sa.insert(revoked), row("b"))
            await tx.execute(sa.insert(revoked), row("b"))
    async with ctx.db.read() as tx:
        assert await jtis(tx) == []


async def test_rows_rowcount_and_returning_come_back_from_each_statement(ctx: Context) -> None:
    async with ctx.db.write() as tx:
        await tx.execute(sa.insert(revoked), [row("a"), row("b"), row("c")])
        updated = await tx.execute(
            sa.update(revoked).where(revoked.c.jti.in_(["a", "b"])).values(expires_at=NOW + timedelta(hours=2))
        )
        assert updated.rowcount == 2
        returned = await tx.execute(sa.insert(tables.events).returning(tables.events.c.id), _event())
        first = returned.scalar_one()
        second = (await tx.execute(sa.insert(tables.events).returning(tables.events.c.id), _event())).scalar_one()
        assert second > first
    async with ctx.db.query() as tx:
        result = await tx.execute(sa.select(revoked).where(revoked.c.expires_at > NOW + timedelta(minutes=90)))
        assert sorted(r.jti for r in result) == ["a", "b"]


def _event() -> dict[str, Any]:
    return {"ts": NOW, "type": "logout", "actor_type": "user", "actor_id": "u1", "detail": {"k": [1, 2]}}


async def test_query_reads_what_writes_committed(ctx: Context) -> None:
    async with ctx.db.write() as tx:
        await tx.execute(sa.insert(revoked), row("a"))
    async with ctx.db.query() as tx:
        assert await jtis(tx) == ["a"]


async def test_query_runs_its_statements_outside_a_transaction(ctx: Context) -> None:
    if ctx.settings.is_sqlite:
        async with ctx.db.query() as tx:
            await jtis(tx)
            driver = await driver_of(tx)
            assert not driver._conn.in_transaction
        async with ctx.db.read() as tx:
            await jtis(tx)
            driver = await driver_of(tx)
            assert driver._conn.in_transaction
        return
    # PostgreSQL: txid_current() names the transaction a statement runs in.
    txid = sa.text("SELECT txid_current()")
    async with ctx.db.read() as tx:
        assert (await tx.execute(txid)).scalar_one() == (await tx.execute(txid)).scalar_one()
    async with ctx.db.query() as tx:
        assert (await tx.execute(txid)).scalar_one() != (await tx.execute(txid)).scalar_one()


async def test_sqlite_statements_run_on_the_connection_thread_not_the_event_loop(ctx: Context) -> None:
    if not ctx.settings.is_sqlite:
        pytest.skip("the SQLite driver only")
    async with ctx.db.query() as tx:
        driver = await driver_of(tx)
        await driver.create_function("thread_id", 0, threading.get_ident)
        ran_on = (await tx.execute(sa.text("SELECT thread_id()"))).scalar_one()
    assert ran_on != threading.get_ident()


async def test_sqlite_costs_one_thread_hop_per_statement(ctx: Context, hops: list[tuple[object, str]]) -> None:
    if not ctx.settings.is_sqlite:
        pytest.skip("the SQLite driver only")
    async with ctx.db.write() as tx:
        await tx.execute(sa.insert(revoked), row("a"))
        await tx.execute(sa.insert(revoked), [row("b"), row("c")])
        assert (await tx.execute(sa.select(sa.func.count()).select_from(revoked))).scalar_one() == 3
        driver = await driver_of(tx)
    # BEGIN IMMEDIATE, three statements, COMMIT; and no ROLLBACK when the pool takes it back.
    assert [name for conn, name in hops if conn is driver][-5:] == ["_run", "_run", "_run", "_run", "commit"], hops
    hops.clear()
    async with ctx.db.query() as tx:
        assert await jtis(tx) == ["a", "b", "c"]
        driver = await driver_of(tx)
    assert [name for conn, name in hops if conn is driver] == ["_run"], hops


async def test_requests_beyond_the_pool_wait_for_a_connection_instead_of_opening_more(
    backend: Backend, tmp_path: Path
) -> None:
    # Two pooled connections, ten readers that each hold one a while: all ten get their answer, and
    # no eleventh, short-lived connection is ever opened beside the pool.
    db = Database(make_settings(backend, tmp_path, db_pool_size=2))
    held: list[int] = []

    async def reader() -> int:
        async with db.query() as tx:
            pool = db.engine.pool
            assert isinstance(pool, QueuePool)
            held.append(pool.checkedout())
            await asyncio.sleep(0.05)
            return int((await tx.execute(sa.text("SELECT 1"))).scalar_one())

    try:
        assert await asyncio.gather(*(reader() for _ in range(10))) == [1] * 10
    finally:
        await db.close()
    assert max(held) == 2, held
