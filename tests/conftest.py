"""Every test runs twice: on the embedded defaults (SQLite, in-process cache) and on PostgreSQL +
Redis. A missing PostgreSQL or Redis skips the second run with its reason, except in CI (CI=true),
where it fails. HANDSHAKE_TEST_BACKENDS=sqlite (or postgres) runs one of them only."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import event

from shared.app import create_app
from shared.context import Context
from shared.settings import Settings
from shared.testing import free_port
from tests.proxy import TcpProxy

PG_ADMIN_DSN = os.environ.get("HANDSHAKE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HANDSHAKE_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = [b for b in os.environ.get("HANDSHAKE_TEST_BACKENDS", "sqlite,postgres").split(",") if b]


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


async def _pg(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Backend:
    name: str
    database_url: str | None = None
    redis_url: str | None = None

    @property
    def uses_redis(self) -> bool:
        return self.redis_url is not None


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite")
        return
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis at {REDIS_URL} is not reachable: {exc}")
    name = f"handshake_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(_pg(PG_ADMIN_DSN, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_DSN} is not reachable: {exc}")
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield Backend("postgres", database_url=f"{base}/{name}", redis_url=REDIS_URL)
    asyncio.run(_pg(PG_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def make_settings(backend: Backend, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": backend.database_url or f"sqlite+aiosqlite:///{tmp_path / 'handshake.db'}",
        "redis_url": backend.redis_url,
        "redis_prefix": f"hs-test-{secrets.token_hex(4)}:",
        "keys_dir": tmp_path / "keys",
        "issuer": "http://testserver",
        # Cheap argon2id in tests: the algorithm and code path are the real ones.
        "argon2_time_cost": 1,
        "argon2_memory_kib": 1024,
        "partner_audiences": ["partner.example"],
        # Every app of the suite runs the embedded broker: on a port of its own, never 1883.
        "mqtt_port": free_port(),
        # Admins and support log in with the password alone here, so the hundreds of tests that need
        # an admin stay about what they test. The default (a second factor required of admin and
        # support) is what tests/account_manager/test_mfa*.py, the dashboard's enrolment test and the
        # README tour run under.
        "mfa_required_roles": [],
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the settings of the `app` fixture."""
    return {}


@pytest.fixture
def settings(backend: Backend, tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    return make_settings(backend, tmp_path, **settings_overrides)


async def _reset_postgres(settings: Settings) -> None:
    dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        exists = await conn.fetchval("SELECT to_regclass('public.users') IS NOT NULL")
        if exists:
            names = ", ".join(f'"{t}"' for t in await _tables(conn))
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


async def _tables(conn: Any) -> list[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
    )
    return [row["tablename"] for row in rows]


@pytest.fixture(scope="session")
def migrated(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Migrate once per session: a template SQLite file that each test copies, or the session's
    PostgreSQL database that each test truncates. Running Alembic per test would dominate the suite."""
    from shared.db import Database
    from shared.migrations import upgrade

    if backend.name == "sqlite":
        template = tmp_path_factory.mktemp("template") / "handshake.db"
        settings = Settings(database_url=f"sqlite+aiosqlite:///{template}", keys_dir=template.parent / "keys")
    else:
        template = None
        settings = Settings(database_url=backend.database_url or "", keys_dir=tmp_path_factory.mktemp("keys"))

    async def run() -> None:
        db = Database(settings)
        try:
            await upgrade(db)
        finally:
            await db.close()

    asyncio.run(run())
    return template


def fresh_database(settings: Settings, migrated: Path | None) -> None:
    """Give a test a migrated, empty database of its own (SQLite)."""
    if settings.is_sqlite and migrated is not None:
        target = Path(settings.database_url.split(":///", 1)[1])
        if not target.exists():
            shutil.copyfile(migrated, target)


@pytest.fixture
async def app(settings: Settings, migrated: Path | None) -> AsyncIterator[FastAPI]:
    if settings.is_sqlite:
        fresh_database(settings, migrated)
    else:
        await _reset_postgres(settings)
    application = create_app(settings)
    # Generous timeouts: on a loaded 2-core machine start-up and shutdown can take seconds.
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30) as manager:
        application.state.lifespan_app = manager.app
        yield application


@pytest.fixture
def ctx(app: FastAPI) -> Context:
    """The running app's Context (for tests that look behind the API)."""
    context: Context = app.state.ctx
    return context


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app.state.lifespan_app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of a real backend, which a test can cut and restore."""
    with TcpProxy() as running:
        yield running


class Users:
    """Register and log in users through the API."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def register(self, username: str | None = None, password: str = "correct horse battery") -> dict[str, Any]:
        username = username or f"user{secrets.token_hex(4)}"
        response = await self.client.post("/v1/auth/register", json={"username": username, "password": password})
        assert response.status_code == 201, response.text
        return {**response.json(), "password": password}

    async def login(self, username: str, password: str = "correct horse battery", **kwargs: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/auth/login", json={"username": username, "password": password}, **kwargs)
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens

    async def new(self, username: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        user = await self.register(username)
        return user, await self.login(user["username"])

    async def admin(self, ctx: Context, role: str = "admin") -> tuple[dict[str, Any], dict[str, Any]]:
        """A user of another type, created the way `handshake users create` does."""
        from account_manager.accounts import create_user
        from shared.models import Role

        username = f"{role}{secrets.token_hex(4)}"
        await create_user(ctx, username=username, password="correct horse battery", role=Role(role))
        return {"username": username}, await self.login(username)


@pytest.fixture
def users(client: httpx.AsyncClient) -> Users:
    return Users(client)


def bearer(tokens: dict[str, Any] | str) -> dict[str, str]:
    token = tokens if isinstance(tokens, str) else tokens["access_token"]
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def statements(ctx: Context, *, loops: bool = False) -> Iterator[list[tuple[str, Any]]]:
    """The SQL (and its parameters) sent while the block runs: what requests send, and with `loops` also
    what the app's own loops send (tasks named handshake-*: the journal, revocation reconciliation, the
    event log)."""
    sent: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        task = asyncio.current_task()
        if loops or task is None or not task.get_name().startswith("handshake-"):
            sent.append((statement, parameters))

    engine = ctx.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """The status, SPEC §2's exact error shape, and the code where SPEC names one."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str), body
    if code is not None:
        assert body["error"] == code, body


# --- when a test fails on a backend timeout: what else was going on ----------------------------------
#
# A backend call that overruns its budget is either a slow backend or a process that could not run
# (a long garbage collection, a starved CPU). The report of a failed PostgreSQL test says which.

_GC_PAUSES: list[tuple[float, float, int]] = []  # (monotonic end, seconds, generation)
_gc_started = 0.0


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    now = time.monotonic()
    if phase == "start":
        _gc_started = now
    elif now - _gc_started > 0.05:
        _GC_PAUSES.append((now, now - _gc_started, info.get("generation", -1)))
        del _GC_PAUSES[:-50]


gc.callbacks.append(_gc_timer)

# What the failures above showed: the suite's process keeps what its 1,300 tests leave behind, and a full
# collection grew past 2 s late in the session: longer than a transaction's budget, so a test that
# happened to be inside one got a 503. Every FREEZE_EVERY tests, what survives a collection is moved
# out of the collector's sight (gc.freeze), so each later collection looks only at what is new.
FREEZE_EVERY = 25
_tests_since_freeze = 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _tests_since_freeze
    result = yield
    _tests_since_freeze += 1
    if _tests_since_freeze >= FREEZE_EVERY:
        _tests_since_freeze = 0
        gc.collect()
        gc.freeze()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and "postgres" in item.name:
        report.sections.append(("what else was going on at the failure", _activity()))
    return report


def _activity() -> str:
    import subprocess

    recent = [
        f"{seconds:.2f} s (generation {gen}) {time.monotonic() - end:.0f} s ago" for end, seconds, gen in _GC_PAUSES
    ]
    query = (
        "SELECT datname, pid, state, wait_event_type, wait_event, now() - xact_start AS in_tx, left(query, 100)"
        " FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    try:
        found = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", query],
            capture_output=True,
            text=True,
            timeout=5,
        )
        top = subprocess.run(
            ["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not ask: {exc}"
    return (
        f"garbage collections over 50 ms: {recent or 'none'}\n\n"
        + found.stdout
        + found.stderr
        + "\nbusiest processes:\n"
        + "\n".join(top.stdout.splitlines()[:8])
    )
