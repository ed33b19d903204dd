"""device state

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_state",
        sa.Column("uid", sa.String(length=20), nullable=False),
        sa.Column("reported", sa.JSON(), nullable=True),
        sa.Column("reported_at", shared.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("desired", sa.JSON(), nullable=True),
        sa.Column("desired_at", shared.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["uid"], ["devices.uid"], name=op.f("fk_device_state_uid_devices"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_device_state")),
    )


def downgrade() -> None:
    op.drop_table("device_state")
