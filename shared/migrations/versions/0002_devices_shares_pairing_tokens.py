"""devices, shares, pairing tokens

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("uid", sa.String(length=20), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("claim_code_hash", sa.String(length=128), nullable=False),
        sa.Column("owner_id", sa.String(length=20), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", shared.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("bound_at", shared.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("connected_at", shared.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_seen", shared.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_devices_owner_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_devices")),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_online"), ["online"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "pairing_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=20), nullable=False),
        sa.Column("created_at", shared.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", shared.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", shared.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("uid", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_pairing_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_pairing_tokens")),
    )
    with op.batch_alter_table("pairing_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pairing_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "device_shares",
        sa.Column("uid", sa.String(length=20), nullable=False),
        sa.Column("user_id", sa.String(length=20), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", shared.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["uid"], ["devices.uid"], name=op.f("fk_device_shares_uid_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_device_shares_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("uid", "user_id", name=op.f("pk_device_shares")),
    )
    with op.batch_alter_table("device_shares", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_shares_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("device_shares", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_shares_user_id"))

    op.drop_table("device_shares")
    with op.batch_alter_table("pairing_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pairing_tokens_user_id"))

    op.drop_table("pairing_tokens")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_owner_id"))
        batch_op.drop_index(batch_op.f("ix_devices_online"))
        batch_op.drop_index(batch_op.f("ix_devices_model"))

    op.drop_table("devices")
