"""The one schema of the platform (SQLAlchemy Core). Migrations in shared/migrations follow it."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from shared.search import bytewise

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    # Usernames are unique regardless of case: "Alice" and "alice" are one person to a human.
    sa.Column("username_key", sa.String(64), nullable=False, unique=True),
    sa.Column("email", sa.String(254)),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False, index=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Indexed: every reconciliation pass asks which users changed since the last one (shared.cache).
    sa.Column("updated_at", UTCDateTime, nullable=False, index=True),
    sa.Column("last_login_at", UTCDateTime),
    # Whether a confirmed second factor is on (SPEC §12); the factor itself is in user_totp. Here so
    # that a login learns it from the row it reads anyway.
    sa.Column("mfa_enabled", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ip", sa.String(64)),
    sa.Column("user_agent", sa.String(512)),
    sa.Column("revoked_at", UTCDateTime, index=True),
    sa.Column("revoke_reason", sa.String(32)),
    # The registered OAuth client the session was issued to (authorization code or device grant);
    # none for a password login. Deleting a client ends its sessions.
    sa.Column("client_id", sa.String(64), index=True),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    # SHA-256 of the token: the token itself is 256 random bits, so a fast hash is enough.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "session_id", sa.String(32), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
    sa.Column("successor_hash", sa.String(64)),
    # The pair handed out on first use, sealed with a key derived from this token (grace replays).
    sa.Column("grace_box", sa.LargeBinary),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("revoked_at", UTCDateTime, nullable=False, index=True),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ts", UTCDateTime, nullable=False, index=True),
    sa.Column("type", sa.String(40), nullable=False, index=True),
    sa.Column("actor_type", sa.String(8), nullable=False),
    sa.Column("actor_id", sa.String(64), index=True),
    sa.Column("device_uid", sa.String(20), index=True),
    sa.Column("ip", sa.String(64)),
    sa.Column("detail", sa.JSON, nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("uid", sa.String(20), primary_key=True),
    sa.Column("model", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(128)),
    # The secret is ≥ 192 random bits: SHA-256 is enough. The claim code is short (it is typed by a
    # person), so it gets a slow hash (scrypt) to make an offline guess from a leaked table costly.
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("claim_code_hash", sa.String(128), nullable=False),
    sa.Column("owner_id", sa.String(20), sa.ForeignKey("users.id", ondelete="SET NULL"), index=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("bound_at", UTCDateTime),
    # Presence, written by the device connector.
    sa.Column("online", sa.Boolean, nullable=False, default=False, index=True),
    sa.Column("connected_at", UTCDateTime),
    sa.Column("last_seen", UTCDateTime),
    sa.Column("ip", sa.String(64)),
    sa.Column("region", sa.String(64)),
    # When its name or who may see it last changed: each reconciliation pass asks which devices changed
    # since the last one, so that the per-process device lists (shared.device_lists) forget what a lost
    # fan-out message did not tell them. Presence does not stamp it (a storm would make every pass read
    # thousands of rows): the lists' time to live bounds a lost presence message instead.
    sa.Column("changed_at", UTCDateTime, index=True),
)

device_shares = sa.Table(
    "device_shares",
    metadata,
    sa.Column("uid", sa.String(20), sa.ForeignKey("devices.uid", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

pairing_tokens = sa.Table(
    "pairing_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
    sa.Column("uid", sa.String(20)),
)

device_state = sa.Table(
    "device_state",
    metadata,
    sa.Column("uid", sa.String(20), sa.ForeignKey("devices.uid", ondelete="CASCADE"), primary_key=True),
    sa.Column("reported", sa.JSON),
    sa.Column("reported_at", UTCDateTime),
    sa.Column("desired", sa.JSON),
    sa.Column("desired_at", UTCDateTime),
)

# --- OAuth 2 (registered clients, authorization codes, device codes, the hosted login) -----------

oauth_clients = sa.Table(
    "oauth_clients",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    # SHA-256 of a 256-bit random secret; none for a public client (a mobile app or a hub keeps no secret).
    sa.Column("secret_hash", sa.String(64)),
    sa.Column("redirect_uris", sa.JSON, nullable=False),
    sa.Column("grant_types", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(20)),
)

hosted_logins = sa.Table(
    "hosted_logins",
    metadata,
    # SHA-256 of the browser's login cookie: a login on the hosted page is a session like any other
    # (listed, revocable, ended by logout-all, a disable or a password change).
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "session_id", sa.String(32), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
)

oauth_codes = sa.Table(
    "oauth_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column(
        "client_id", sa.String(64), sa.ForeignKey("oauth_clients.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The hosted-page session that approved it: ending that session voids its unredeemed codes.
    sa.Column("login_session_id", sa.String(32), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    sa.Column("redirect_uri", sa.String(2048)),
    sa.Column("code_challenge", sa.String(128)),
    sa.Column("code_challenge_method", sa.String(8)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("used_at", UTCDateTime),
    # The session its redemption opened: a second redemption revokes it (RFC 6749 §4.1.2).
    sa.Column("session_id", sa.String(32)),
)

oauth_device_codes = sa.Table(
    "oauth_device_codes",
    metadata,
    sa.Column("device_code_hash", sa.String(64), primary_key=True),
    # SHA-256 of the user code without its dash, upper-cased: what the person types, looked up.
    sa.Column("user_code_hash", sa.String(64), nullable=False, unique=True),
    sa.Column(
        "client_id", sa.String(64), sa.ForeignKey("oauth_clients.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("poll_interval", sa.Integer, nullable=False),
    sa.Column("last_polled_at", UTCDateTime),
    sa.Column("status", sa.String(10), nullable=False),  # pending, approved, denied, redeemed
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE")),
    sa.Column("decided_at", UTCDateTime),
    sa.Column("session_id", sa.String(32)),
)

# --- The second factor (SPEC §12) ----------------------------------------------------------------

user_totp = sa.Table(
    "user_totp",
    metadata,
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    # The TOTP secret, encrypted (AES-GCM, a key of the key directory, the user id as associated data).
    sa.Column("secret_box", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("confirmed_at", UTCDateTime),  # none: enrolled, not yet confirmed, not in force
    # The last time step (unix time // 30) a code was accepted for: a step at or below it is refused,
    # so each code works once.
    sa.Column("last_step", sa.BigInteger),
)

recovery_codes = sa.Table(
    "recovery_codes",
    metadata,
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    # SHA-256 of an 80-bit random code: a fast hash is enough for that much randomness.
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
)

mfa_tokens = sa.Table(
    "mfa_tokens",
    metadata,
    # SHA-256 of the token a password step hands out: single use, for one user, from one address.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(20), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("ip", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("used_at", UTCDateTime),
)

# The admin lists at fleet size: pages newest first, and prefix searches as byte-order ranges
# (shared.search). On SQLite the primary key and the unique username_key compare byte by byte already.
sa.Index("ix_devices_created_at_uid", devices.c.created_at.desc(), devices.c.uid)
sa.Index("ix_users_created_at_id", users.c.created_at.desc(), users.c.id)
sa.Index("ix_devices_model_key", bytewise(sa.func.lower(devices.c.model)))
sa.Index("ix_users_email_key", bytewise(sa.func.lower(users.c.email)))
sa.Index("ix_devices_uid_bytewise", bytewise(devices.c.uid)).ddl_if(dialect="postgresql")
sa.Index("ix_users_username_key_bytewise", bytewise(users.c.username_key)).ddl_if(dialect="postgresql")
