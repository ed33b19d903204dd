"""shared.sqlite on its own: every part of the cursor's public surface works (not only what SQLAlchemy
calls), and the internals of aiosqlite it reaches into are there, as the pinned series has them."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from shared.sqlite import Connection, Cursor, connector


@pytest.fixture
async def conn(tmp_path: Path) -> AsyncIterator[Connection]:
    connection = await connector(tmp_path / "driver.db", timeout=5)()
    try:
        yield connection
    finally:
        await connection.close()


async def test_the_aiosqlite_internals_reached_into_are_there() -> None:
    # What shared.sqlite (and SQLAlchemy's adapter) use of aiosqlite.Connection besides its public API.
    connection = aiosqlite.Connection(lambda: sqlite3.connect(":memory:"), iter_chunk_size=64)
    assert connection._iter_chunk_size == 64
    assert isinstance(connection._thread, threading.Thread)
    await connection
    try:
        assert isinstance(connection._conn, sqlite3.Connection)
        assert await connection._execute(lambda: threading.current_thread()) is connection._thread  # type: ignore[no-untyped-call]
    finally:
        await connection.close()


async def test_statements_run_fetch_and_report(conn: Connection) -> None:
    cursor = conn.cursor()
    assert isinstance(cursor, Cursor)
    await cursor.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    await cursor.executemany("INSERT INTO t (name) VALUES (?)", [("a",), ("b",), ("c",)])
    assert cursor.rowcount == 3
    await cursor.execute("INSERT INTO t (name) VALUES (?)", ("d",))
    assert cursor.lastrowid == 4
    await cursor.execute("SELECT id, name FROM t ORDER BY id")
    assert [column[0] for column in cursor.description] == ["id", "name"]
    assert await cursor.fetchone() == (1, "a")
    cursor.arraysize = 2
    assert await cursor.fetchmany() == [(2, "b"), (3, "c")]
    assert await cursor.fetchall() == [(4, "d")]
    assert await cursor.fetchone() is None
    await cursor.close()


async def test_the_rest_of_the_cursor_surface_works(conn: Connection) -> None:
    cursor = conn.cursor()
    await cursor.executescript("CREATE TABLE s (n INTEGER); INSERT INTO s VALUES (1); INSERT INTO s VALUES (2);")
    assert isinstance(cursor.connection, sqlite3.Connection)
    assert cursor.row_factory is None
    cursor.row_factory = sqlite3.Row
    await cursor.execute("SELECT n FROM s ORDER BY n")
    rows = await cursor.fetchall()
    assert [row["n"] for row in rows] == [1, 2]


async def test_commit_and_rollback_outside_a_transaction_cost_nothing(conn: Connection) -> None:
    cursor = conn.cursor()
    await cursor.execute("CREATE TABLE u (n INTEGER)")
    await conn.commit()  # nothing open: no hop, no error
    await cursor.execute("BEGIN")
    await cursor.execute("INSERT INTO u VALUES (1)")
    await conn.rollback()
    await cursor.execute("SELECT count(*) FROM u")
    assert await cursor.fetchone() == (0,)
