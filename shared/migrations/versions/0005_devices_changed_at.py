"""devices.changed_at: when a device's listing or membership last changed (indexed: each reconciliation
pass asks which devices changed since the last one, for the per-process device lists of shared.device_lists)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("changed_at", UTCDateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_devices_changed_at"), "devices", ["changed_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_devices_changed_at"), table_name="devices")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("changed_at")
