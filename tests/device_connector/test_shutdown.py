"""Every retry is bounded: a connector whose writes keep failing (the database locked by another
process, or cut) still shuts down within 5 s, and gives up what it could not write with a log line
instead of retrying past its shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager

from shared.app import create_app
from shared.settings import Settings
from tests.conftest import Backend, Users, _reset_postgres, fresh_database
from tests.device_connector.helpers import Mqtt, make_world
from tests.proxy import TcpProxy

SHUTDOWN_BOUND = 5.0


@contextlib.asynccontextmanager
async def database_failing(settings: Settings, backend: Backend, pg: TcpProxy) -> AsyncIterator[None]:
    """Every write of reported state fails from here on, at once: on PostgreSQL the connection is cut;
    on SQLite another process has renamed the table (a lock held would make each write wait SQLite's
    busy timeout instead, in a thread nothing can interrupt). The renaming waits, in a thread, for the
    app's writes in progress: the event loop they need stays free."""
    if backend.database_url is None:
        path = settings.database_url.split(":///", 1)[1]

        def rename(old: str, new: str) -> None:
            with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as db:
                db.execute(f"ALTER TABLE {old} RENAME TO {new}")

        await asyncio.to_thread(rename, "device_state", "device_state_away")
        try:
            yield
        finally:
            await asyncio.to_thread(rename, "device_state_away", "device_state")
        return
    pg.down()
    try:
        yield
    finally:
        pg.up()


@pytest.fixture
def pg() -> Iterator[TcpProxy]:
    with TcpProxy() as running:
        yield running


@pytest.fixture
def failing_settings(backend: Backend, settings: Settings, pg: TcpProxy, migrated: Path | None) -> Settings:
    """The suite's settings, PostgreSQL reached through a proxy the test can cut."""
    if backend.database_url is None:
        fresh_database(settings, migrated)
        return settings
    database = urlsplit(backend.database_url)
    via = pg.forward_to(database.hostname or "127.0.0.1", database.port or 5432)
    url = database._replace(netloc=f"{database.netloc.rpartition('@')[0]}@{via}").geturl()
    return settings.model_copy(update={"database_url": url})


class Served:
    """The whole platform in this process, on settings whose database the test can make fail."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.manager = LifespanManager(self.app, startup_timeout=30, shutdown_timeout=60)
        self.running = False

    async def shut_down(self) -> float:
        """The lifespan's shutdown (what SIGTERM runs after the HTTP server stops); its seconds."""
        started = time.monotonic()
        self.running = False
        await self.manager.__aexit__(None, None, None)
        return time.monotonic() - started


@pytest.fixture
async def served(failing_settings: Settings) -> AsyncIterator[tuple[Served, httpx.AsyncClient]]:
    if not failing_settings.is_sqlite:
        await _reset_postgres(failing_settings)
    platform = Served(failing_settings)
    await platform.manager.__aenter__()
    platform.running = True
    transport = httpx.ASGITransport(app=platform.manager.app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        try:
            yield platform, client
        finally:
            if platform.running:
                await platform.shut_down()


async def test_a_connector_whose_writes_keep_failing_shuts_down_within_5_s(
    served: tuple[Served, httpx.AsyncClient],
    failing_settings: Settings,
    backend: Backend,
    pg: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform, client = served
    world = await make_world(client, Users(client), platform.app.state.ctx)
    device = Mqtt(failing_settings.mqtt_port, world.uid, world.uid, world.device_token)
    assert await device.connect() == 0
    async with database_failing(failing_settings, backend, pg):
        # Reported state and the disconnect queue up in the journal; none of it can be written.
        for n in range(20):
            await device.publish(f"devices/{world.uid}/state", f'{{"n":{n}}}'.encode())
        await device.close()
        await asyncio.sleep(1.5)  # the journal is retrying by now
        took = await platform.shut_down()
    assert took < SHUTDOWN_BOUND, f"shut down in {took:.1f} s"
    gave_up = [r.getMessage() for r in caplog.records if r.name == "handshake.journal" and r.levelname == "ERROR"]
    assert any(message.startswith("journal stopped with") for message in gave_up), gave_up
