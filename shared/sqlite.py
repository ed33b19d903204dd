"""The SQLite driver under SQLAlchemy: aiosqlite, with one thread hop per statement.

aiosqlite runs every sqlite3 call on its own thread, and SQLAlchemy's adapter makes four calls per
statement (cursor, execute, fetchall, close). A hop to that thread and back costs ~75 µs of CPU here,
ten times an indexed query itself, so a login spent more on hops than on SQL. Here a statement is
executed, fetched and closed in one hop, and COMMIT or ROLLBACK outside a transaction costs none.
Every sqlite3 call still runs on the connection's thread, never on the event loop.

This reaches into aiosqlite's internals (its `_execute`, `_conn`, `_iter_chunk_size`, `_thread`), as
SQLAlchemy's own aiosqlite adapter does: aiosqlite is pinned to the minor series whose internals
tests/shared/test_sqlite_driver.py checks, and the Cursor's whole public surface is ours."""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

_Rows = deque[Any]


class _Outcome:
    """What one statement left behind, captured on the connection's thread."""

    __slots__ = ("description", "lastrowid", "rowcount", "rows")

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.description = cursor.description
        # Only a statement that yields rows has a description; an INSERT's fetchall would be empty.
        self.rows: _Rows = deque(cursor.fetchall() if cursor.description else ())
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid


class Cursor(aiosqlite.Cursor):
    """A cursor whose sqlite3 cursor lives for one statement: made, run, fetched and closed in one hop.
    Rows are buffered, so fetching them and closing the cursor cost no hop."""

    def __init__(self, conn: Connection) -> None:  # no sqlite3 cursor yet: it is made in the hop
        self._conn = conn
        self.iter_chunk_size = conn._iter_chunk_size
        self._arraysize = 1
        self._row_factory: Any = None
        self._outcome: _Outcome | None = None
        self._rows: _Rows = deque()

    def _run(self, method: str, sql: str, parameters: Any) -> _Outcome:
        cursor = self._conn._conn.cursor()
        try:
            cursor.row_factory = self._row_factory
            if method == "executescript":
                cursor.executescript(sql)
            else:
                getattr(cursor, method)(sql, parameters)
            return _Outcome(cursor)
        finally:
            cursor.close()

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Cursor:
        return await self._hop("execute", sql, parameters or ())

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Cursor:
        return await self._hop("executemany", sql, parameters)

    async def executescript(self, sql_script: str) -> Cursor:
        return await self._hop("executescript", sql_script, ())

    async def _hop(self, method: str, sql: str, parameters: Any) -> Cursor:
        outcome: _Outcome = await self._conn._execute(self._run, method, sql, parameters)  # type: ignore[no-untyped-call]
        self._outcome = outcome
        self._rows = outcome.rows
        return self

    async def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        count = min(len(self._rows), self._arraysize if size is None else size)
        return [self._rows.popleft() for _ in range(count)]

    async def fetchall(self) -> Sequence[Any]:
        taken, self._rows = list(self._rows), deque()
        return taken

    async def close(self) -> None:
        self._rows.clear()

    @property
    def rowcount(self) -> int:
        return self._outcome.rowcount if self._outcome else -1

    @property
    def lastrowid(self) -> int | None:
        return self._outcome.lastrowid if self._outcome else None

    @property
    def description(self) -> Any:
        return self._outcome.description if self._outcome else None

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn._conn

    @property
    def row_factory(self) -> Any:
        return self._row_factory

    @row_factory.setter
    def row_factory(self, factory: Any) -> None:
        self._row_factory = factory  # applied to the sqlite3 cursor of each later statement

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value


class Connection(aiosqlite.Connection):
    def cursor(self) -> Cursor:  # type: ignore[override]
        # SQLAlchemy enters it with `async with`; aiosqlite.Cursor's __aenter__ returns the cursor.
        return Cursor(self)

    async def commit(self) -> None:
        if self._conn.in_transaction:
            await super().commit()

    async def rollback(self) -> None:
        # SQLAlchemy rolls back every connection it returns to the pool; after a COMMIT there is
        # nothing to roll back, and asking the thread to do nothing would still cost a hop.
        if self._conn.in_transaction:
            await super().rollback()


def connector(path: Path | str, *, timeout: float) -> Any:
    """`create_async_engine(..., async_creator=connector(path, timeout=5))`."""

    async def connect() -> Connection:
        # check_same_thread=False only so that `in_transaction` can be read from the event loop:
        # statements still run on the connection's own thread, one at a time.
        connection = Connection(
            lambda: sqlite3.connect(str(path), timeout=timeout, check_same_thread=False), iter_chunk_size=64
        )
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite: never hold up exit
        await connection
        return connection

    return connect
