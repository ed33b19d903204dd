"""Alembic environment: always handed a live connection by shared.migrations.upgrade."""

from __future__ import annotations

from alembic import context

from shared.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `handshake migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
