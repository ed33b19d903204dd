"""indexes of the admin lists at fleet size: pages newest first, prefix search by byte order

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (name, table, SQLite's key, PostgreSQL's key). On PostgreSQL a prefix range is compared under the "C"
# collation (shared.search): the database's own collation need not order strings byte by byte.
# SQLite's primary key and unique username_key already do, so they get no second index there.
INDEXES = [
    ("ix_devices_created_at_uid", "devices", "created_at DESC, uid", "created_at DESC, uid"),
    ("ix_users_created_at_id", "users", "created_at DESC, id", "created_at DESC, id"),
    ("ix_devices_model_key", "devices", "lower(model)", '(lower(model)) COLLATE "C"'),
    ("ix_users_email_key", "users", "lower(email)", '(lower(email)) COLLATE "C"'),
    ("ix_devices_uid_bytewise", "devices", None, 'uid COLLATE "C"'),
    ("ix_users_username_key_bytewise", "users", None, 'username_key COLLATE "C"'),
]


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    postgres = _postgres()
    for name, table, sqlite_key, postgres_key in INDEXES:
        key = postgres_key if postgres else sqlite_key
        if key is not None:
            op.execute(f"CREATE INDEX {name} ON {table} ({key})")


def downgrade() -> None:
    postgres = _postgres()
    for name, _, sqlite_key, _ in reversed(INDEXES):
        if postgres or sqlite_key is not None:
            op.execute(f"DROP INDEX {name}")
