"""One migration history for the whole platform (Alembic), run by `handshake migrate` and on serve."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from shared.db import BACKEND_ERRORS, Database
from shared.errors import ConfigurationError

_HERE = Path(__file__).parent
# Any constant will do: it only has to be the same in every process that migrates at once.
_ADVISORY_LOCK = 0x48534B


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: sa.Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several services starting at once must not migrate at once.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
    command.upgrade(_config(connection), "head")


async def upgrade(db: Database) -> None:
    try:
        async with db.engine.connect() as conn:
            conn = await conn.execution_options(handshake_write=True)
            async with conn.begin():
                await conn.run_sync(_upgrade)
    except BACKEND_ERRORS as exc:  # found at start-up (serve, migrate): one line, not a traceback
        cause = getattr(exc, "orig", None) or exc  # the driver's own error, not SQLAlchemy's wrapping
        lines = str(cause).splitlines() or [type(cause).__name__]
        why = "it stopped answering" if isinstance(exc, TimeoutError) else lines[0]
        raise ConfigurationError(
            f"could not bring the database schema up to date ({why}); another process may be migrating it"
            " (each waits for the one before): try again, or check the database"
        ) from exc


def _current(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)
