"""Async storage: one engine, short timeouts, writes that commit atomically with their events and
fan out only after the commit. SQLite takes its write lock up front (BEGIN IMMEDIATE) and waits
for it (busy_timeout), so "database is locked" becomes a short wait, not a 500."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared import deadline, sqlite
from shared.errors import ServiceUnavailableError
from shared.settings import Settings, sqlite_file

log = logging.getLogger("handshake.db")

_WRITE = "handshake_write"
_AUTOCOMMIT = "handshake_autocommit"

# Errors that mean "the database is not there right now": answered with 503, never 500.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
    sa.exc.DisconnectionError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)


class Tx:
    """A connection in a transaction, plus what to do once it has committed."""

    def __init__(self, conn: AsyncConnection, *, write: bool = False) -> None:
        self.conn = conn
        # A write transaction: rows read to decide a change are locked (SELECT ... FOR UPDATE on
        # PostgreSQL; SQLite's BEGIN IMMEDIATE holds the whole database already).
        self.write = write
        self._after_commit: list[Callable[[], Awaitable[None] | None]] = []
        self._before_commit: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        self._after_commit.append(callback)

    def before_commit(self, callback: Callable[[], None]) -> None:
        """Called once the transaction's work is done, right before its COMMIT is sent."""
        self._before_commit.append(callback)

    def _committing(self) -> None:
        for callback in self._before_commit:
            callback()

    async def execute(self, statement: Any, params: Any = None) -> sa.CursorResult[*tuple[Any, ...]]:
        result: sa.CursorResult[*tuple[Any, ...]] = await self.conn.execute(statement, params)
        return result


class Database:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine = self._create_engine(settings)
        self._write_lock = asyncio.Lock() if settings.is_sqlite else None

    @staticmethod
    def _create_engine(settings: Settings) -> AsyncEngine:
        timeout = settings.backend_timeout
        if settings.is_sqlite:
            path = sqlite_file(settings.database_url)
            if path is not None:
                # Its directory exists (Settings checks it: a mistyped path is an error, not a new
                # empty deployment). Private like the keys (password hashes and sessions are in it); SQLite gives its -wal
                # and -shm files the database file's mode.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            # A file database gets a fixed pool like PostgreSQL (each connection is a thread and a file
            # handle, opened once); an in-memory one keeps SQLAlchemy's single shared connection.
            pool: dict[str, Any] = {}
            if path is not None:
                pool = {"pool_size": settings.db_pool_size, "max_overflow": 0, "pool_timeout": timeout}
            engine = create_async_engine(
                settings.database_url, async_creator=sqlite.connector(path or ":memory:", timeout=5), **pool
            )

            # Rows of an executemany INSERT go in multi-row statements, as they do with RETURNING. The
            # driver runs an executemany as one step of SQLite per row, and each step hands the GIL over
            # and waits to get it back, up to the 5-ms switch interval beside a busy event loop (1,000
            # events: 278 ms, in one statement 17 ms). A documented attribute of SQLAlchemy's Dialect;
            # not for an INSERT with ON CONFLICT, which SQLAlchemy keeps as an executemany.
            engine.dialect.use_insertmanyvalues_wo_returning = True

            @event.listens_for(engine.sync_engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                # Take transaction control from the driver so BEGIN IMMEDIATE is ours to send.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA busy_timeout=5000")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

            @event.listens_for(engine.sync_engine, "begin")
            def _on_begin(conn: sa.Connection) -> None:
                options = conn.get_execution_options()
                if options.get(_AUTOCOMMIT, False):
                    return  # Database.query: the statement runs in SQLite's own implicit transaction
                conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE, False) else "BEGIN")

            return engine
        return create_async_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=0,
            pool_timeout=timeout,
            # No pre-ping (a round trip per checkout): a connection that died answers this request
            # with 503 and is thrown away; the next checkout opens a fresh one.
            pool_pre_ping=False,
            connect_args={"timeout": timeout, "command_timeout": max(timeout, 1.0) * 5},
        )

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[Tx]:
        if write and self._write_lock is not None:
            # SQLite has one writer: writers of this process queue here, in order, instead of polling
            # for the file lock with sleeps (busy_timeout), which starves everyone under a storm.
            async with self._write_lock:
                async with self._transaction_on_connection(write=True) as tx:
                    yield tx
            return
        async with self._transaction_on_connection(write=write) as tx:
            yield tx

    def _budget(self) -> float | None:
        """Seconds a transaction of the current request may take (None: outside a request, or SQLite,
        a local file that cannot hang the way a network peer does)."""
        if self.settings.is_sqlite:
            return None
        return deadline.budget(self.settings.backend_timeout * 2)

    @asynccontextmanager
    async def _bounded(self, conn: AsyncConnection, seconds: float) -> AsyncIterator[None]:
        """What runs on `conn` within `seconds`. Past them the connection is dropped unanswered: closed
        at once, never rolled back (a database that answers nothing would hold the rollback too)."""
        scope = asyncio.timeout(seconds)
        try:
            with deadline.spending():
                async with scope:
                    yield
        except TimeoutError:
            if not scope.expired():
                raise
            log.warning("database call dropped: its %.2f s budget ran out", seconds)
            await conn.invalidate()
            raise ServiceUnavailableError() from None

    @asynccontextmanager
    async def _transaction_on_connection(self, *, write: bool) -> AsyncIterator[Tx]:
        try:
            async with self.engine.connect() as conn:
                if write:
                    conn = await conn.execution_options(**{_WRITE: True})
                tx = Tx(conn, write=write)
                seconds = self._budget()
                if seconds is None:
                    async with conn.begin():
                        yield tx
                        tx._committing()
                else:
                    async with self._bounded(conn, seconds):
                        transaction = await conn.begin()
                        try:
                            yield tx
                        except asyncio.CancelledError:
                            raise  # the deadline passed: no rollback on a connection that is dropped
                        except BaseException:
                            await transaction.rollback()
                            raise
                        tx._committing()
                        await transaction.commit()
        except BACKEND_ERRORS as exc:
            if isinstance(exc, sa.exc.IntegrityError):
                raise
            log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            raise ServiceUnavailableError() from exc
        for callback in tx._after_commit:
            result = callback()
            if result is not None:
                await result

    @asynccontextmanager
    async def _outside_transaction(self) -> AsyncIterator[Tx]:
        try:
            async with self.engine.connect() as conn:
                # SQLite: our begin hook sends no BEGIN. PostgreSQL: the driver sends no BEGIN and
                # no COMMIT (asyncpg's autocommit is a client-side flag: no round trip to set it).
                options = {_AUTOCOMMIT: True} if self.settings.is_sqlite else {"isolation_level": "AUTOCOMMIT"}
                tx = Tx(await conn.execution_options(**options))
                seconds = self._budget()
                if seconds is None:
                    yield tx
                else:
                    async with self._bounded(conn, seconds):
                        yield tx
        except BACKEND_ERRORS as exc:
            log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            raise ServiceUnavailableError() from exc

    def query(self) -> Any:
        """`async with db.query() as tx:` — one read statement outside a transaction: no BEGIN and no
        COMMIT, two round trips (PostgreSQL) or thread hops (SQLite) fewer than `read()`. Several
        statements would each see their own snapshot: use `read()` when they must agree."""
        return self._outside_transaction()

    def write(self) -> Any:
        """`async with db.write() as tx:` — one atomic change and its events."""
        return self._transaction(write=True)

    def read(self) -> Any:
        return self._transaction(write=False)

    async def ping(self) -> bool:
        """Whether the database answers within the backend timeout (/readyz)."""
        try:
            async with asyncio.timeout(self.settings.backend_timeout):
                return await self.problem() is None
        except TimeoutError:
            return False

    async def problem(self) -> str | None:
        """What keeps the database from answering, in a few words; None when it answers. It waits
        twice the backend timeout (start-up's first connection); `ping` bounds it to the timeout itself."""
        try:
            async with asyncio.timeout(self.settings.backend_timeout * 2):
                async with self.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            return None
        except Exception as exc:
            return _describe(exc)

    async def close(self) -> None:
        await self.engine.dispose()


# PostgreSQL's answers at connection time that are not "the server is not there" (SQLSTATE classes 28
# and 3D): the server runs, and something in HANDSHAKE_DATABASE_URL is wrong.
_REFUSALS = {
    "28P01": "the password was refused",
    "28000": "the user (role) is not allowed or does not exist",
    "3D000": "the database does not exist",
}


def _describe(exc: BaseException) -> str:
    found: BaseException | None = exc
    while found is not None:
        code = getattr(found, "sqlstate", None)
        if isinstance(code, str) and code in _REFUSALS:
            return _REFUSALS[code]
        found = getattr(found, "orig", None) or found.__cause__ or found.__context__
    if isinstance(exc, TimeoutError):
        return "it did not answer in time"
    if "database is locked" in str(exc):  # SQLite: a file another process is writing (a new one, not WAL yet)
        return "another process holds it locked"
    return "it is not running or not reachable"
