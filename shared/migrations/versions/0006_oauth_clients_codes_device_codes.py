"""OAuth 2: registered clients, authorization codes, device codes, hosted-page logins; sessions.client_id

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import shared.tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTC = shared.tables.UTCDateTime


def upgrade() -> None:
    op.add_column("sessions", sa.Column("client_id", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_sessions_client_id"), "sessions", ["client_id"], unique=False)
    op.create_table(
        "oauth_clients",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=True),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("grant_types", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=20), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_clients")),
    )
    op.create_table(
        "hosted_logins",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("expires_at", UTC(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_hosted_logins_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_hosted_logins")),
    )
    op.create_index(op.f("ix_hosted_logins_session_id"), "hosted_logins", ["session_id"], unique=False)
    op.create_index(op.f("ix_hosted_logins_expires_at"), "hosted_logins", ["expires_at"], unique=False)
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=20), nullable=False),
        sa.Column("login_session_id", sa.String(length=32), nullable=False),
        sa.Column("redirect_uri", sa.String(length=2048), nullable=True),
        sa.Column("code_challenge", sa.String(length=128), nullable=True),
        sa.Column("code_challenge_method", sa.String(length=8), nullable=True),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("expires_at", UTC(timezone=True), nullable=False),
        sa.Column("used_at", UTC(timezone=True), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["oauth_clients.id"], name=op.f("fk_oauth_codes_client_id_oauth_clients"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_oauth_codes_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["login_session_id"],
            ["sessions.id"],
            name=op.f("fk_oauth_codes_login_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_oauth_codes")),
    )
    op.create_index(op.f("ix_oauth_codes_client_id"), "oauth_codes", ["client_id"], unique=False)
    op.create_index(op.f("ix_oauth_codes_expires_at"), "oauth_codes", ["expires_at"], unique=False)
    op.create_table(
        "oauth_device_codes",
        sa.Column("device_code_hash", sa.String(length=64), nullable=False),
        sa.Column("user_code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC(timezone=True), nullable=False),
        sa.Column("expires_at", UTC(timezone=True), nullable=False),
        sa.Column("poll_interval", sa.Integer(), nullable=False),
        sa.Column("last_polled_at", UTC(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("user_id", sa.String(length=20), nullable=True),
        sa.Column("decided_at", UTC(timezone=True), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["oauth_clients.id"],
            name=op.f("fk_oauth_device_codes_client_id_oauth_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_oauth_device_codes_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_code_hash", name=op.f("pk_oauth_device_codes")),
        sa.UniqueConstraint("user_code_hash", name=op.f("uq_oauth_device_codes_user_code_hash")),
    )
    op.create_index(op.f("ix_oauth_device_codes_client_id"), "oauth_device_codes", ["client_id"], unique=False)
    op.create_index(op.f("ix_oauth_device_codes_expires_at"), "oauth_device_codes", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("oauth_device_codes")
    op.drop_table("oauth_codes")
    op.drop_table("hosted_logins")
    op.drop_table("oauth_clients")
    op.drop_index(op.f("ix_sessions_client_id"), table_name="sessions")
    op.drop_column("sessions", "client_id")
