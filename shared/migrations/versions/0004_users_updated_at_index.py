"""an index on users.updated_at (reconciliation asks for users changed since its last pass)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_users_updated_at"), "users", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_users_updated_at"), table_name="users")
