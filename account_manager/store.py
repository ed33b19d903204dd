"""SQL of the account manager: users, sessions, refresh tokens, events read back for admins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared import tables
from shared.db import Tx
from shared.errors import UsernameTakenError
from shared.events import Event, event_from_row
from shared.search import starts_with

users, sessions, refresh_tokens, events = tables.users, tables.sessions, tables.refresh_tokens, tables.events


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    username: str
    email: str | None
    password_hash: str
    role: str
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None
    updated_at: datetime  # the row's version (shared.cache)
    mfa_enabled: bool = False


@dataclass(frozen=True, slots=True)
class RefreshRow:
    token_hash: str
    session_id: str
    expires_at: datetime
    used_at: datetime | None
    successor_hash: str | None
    grace_box: bytes | None
    created_at: datetime
    user_id: str
    session_revoked: bool
    user_role: str
    user_disabled: bool
    client_id: str | None = None
    user_mfa_enabled: bool = False


@dataclass(frozen=True, slots=True)
class UserListing:
    """A user as the admins' list shows it: the row without its secrets, and its live sessions."""

    id: str
    username: str
    email: str | None
    role: str
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None
    mfa_enabled: bool
    active_sessions: int


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    created_at: datetime
    last_used_at: datetime
    ip: str | None
    user_agent: str | None


def _user(row: sa.Row[Any] | None) -> UserRow | None:
    if row is None:
        return None
    return UserRow(
        id=row.id,
        username=row.username,
        email=row.email,
        password_hash=row.password_hash,
        role=row.role,
        disabled=row.disabled,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
        updated_at=row.updated_at,
        mfa_enabled=bool(row.mfa_enabled),
    )


# The statements of a login and of GET /v1/users/me, built once: building a statement and its cache
# key cost more CPU than SQLite takes to run it. Executed with a dict of parameters, they are compiled
# once per process too.
_USER_BY_NAME = sa.select(users).where(users.c.username_key == sa.bindparam("username_key"))
_USER_BY_ID = sa.select(users).where(users.c.id == sa.bindparam("user_id"))
_INSERT_SESSION = sa.insert(sessions).values(
    id=sa.bindparam("sid"),
    user_id=sa.bindparam("user_id"),
    created_at=sa.bindparam("now"),
    last_used_at=sa.bindparam("now"),
    expires_at=sa.bindparam("expires_at"),
    ip=sa.bindparam("ip"),
    user_agent=sa.bindparam("user_agent"),
    client_id=sa.bindparam("client_id"),
)
_INSERT_REFRESH = sa.insert(refresh_tokens).values(
    token_hash=sa.bindparam("refresh_hash"),
    session_id=sa.bindparam("sid"),
    created_at=sa.bindparam("now"),
    expires_at=sa.bindparam("expires_at"),
)
_RECORD_LOGIN = (
    sa.update(users)
    .where(users.c.id == sa.bindparam("user_id"))
    .values(last_login_at=sa.bindparam("now"), updated_at=sa.bindparam("now"))
    .returning(*users.c)  # the row as the login left it, for this process's cache of it
)
# PostgreSQL takes the three as one statement: data-modifying CTEs commit or fail together, and the
# refresh token's foreign key is checked at the end of the statement, when the session is there.
_OPEN_SESSION_IN_ONE = _RECORD_LOGIN.add_cte(_INSERT_SESSION.cte("new_session")).add_cte(
    _INSERT_REFRESH.cte("first_refresh")
)


async def user_by_username(tx: Tx, *, username: str) -> UserRow | None:
    result = await tx.execute(_USER_BY_NAME, {"username_key": username.lower()})
    return _user(result.first())


async def user_by_id(tx: Tx, *, user_id: str) -> UserRow | None:
    return _user((await tx.execute(_USER_BY_ID, {"user_id": user_id})).first())


async def insert_user(
    tx: Tx, *, user_id: str, username: str, password_hash: str, role: str, email: str | None, now: datetime
) -> None:
    """UsernameTakenError when the name is someone's already: two registrations of one name at once
    both pass a look-up first, and the unique index lets one of them in."""
    statement = sa.insert(users).values(
        id=user_id,
        username=username,
        username_key=username.lower(),
        email=email,
        password_hash=password_hash,
        role=role,
        disabled=False,
        created_at=now,
        updated_at=now,
        mfa_enabled=False,
    )
    try:
        await tx.execute(statement)
    except sa.exc.IntegrityError:
        raise UsernameTakenError() from None


async def update_user(tx: Tx, *, user_id: str, now: datetime, **values: Any) -> None:
    await tx.execute(sa.update(users).where(users.c.id == user_id).values(updated_at=now, **values))


async def count_users(tx: Tx) -> int:
    return int((await tx.execute(sa.select(sa.func.count()).select_from(users))).scalar_one())


def _active_sessions(now: datetime) -> sa.ColumnElement[bool]:
    return (sessions.c.revoked_at.is_(None)) & (sessions.c.expires_at > now)


def _matches(query: str) -> sa.ColumnElement[bool]:
    """The user's username or email begins with `query` (case aside), or `query` is its id: index
    lookups joined by OR (see shared.search), so a search costs what it finds, not the user count."""
    key = query.lower()
    return sa.or_(
        starts_with(users.c.username_key, key), starts_with(sa.func.lower(users.c.email), key), users.c.id == query
    )


async def list_users(
    tx: Tx,
    *,
    query: str | None,
    role: str | None,
    limit: int,
    offset: int,
    now: datetime,
    user_id: str | None = None,
) -> tuple[list[UserListing], int]:
    where = []
    if user_id:
        where.append(users.c.id == user_id)
    if query:
        where.append(_matches(query))
    if role:
        where.append(users.c.role == role)
    active = (
        sa.select(sa.func.count())
        .where(sessions.c.user_id == users.c.id, _active_sessions(now))
        .scalar_subquery()
        .label("active_sessions")
    )
    total = (await tx.execute(sa.select(sa.func.count()).select_from(users).where(*where))).scalar_one()
    rows = await tx.execute(
        sa.select(
            users.c.id,
            users.c.username,
            users.c.email,
            users.c.role,
            users.c.disabled,
            users.c.created_at,
            users.c.last_login_at,
            users.c.mfa_enabled,
            active,
        )
        .where(*where)
        .order_by(users.c.created_at.desc(), users.c.id)
        .limit(limit)
        .offset(offset)
    )
    found = [
        UserListing(
            id=row.id,
            username=row.username,
            email=row.email,
            role=row.role,
            disabled=bool(row.disabled),
            created_at=row.created_at,
            last_login_at=row.last_login_at,
            mfa_enabled=bool(row.mfa_enabled),
            active_sessions=int(row.active_sessions or 0),
        )
        for row in rows
    ]
    return found, int(total)


async def open_session(
    tx: Tx,
    *,
    sid: str,
    user_id: str,
    refresh_hash: str,
    now: datetime,
    expires_at: datetime,
    ip: str | None,
    user_agent: str | None,
    client_id: str | None = None,
) -> UserRow | None:
    """A login's rows: the session, its first refresh token and the user's last login time; returns the
    user's row as it leaves it. One round trip on PostgreSQL, three statements (in one transaction) on
    SQLite, which has no DML in CTEs."""
    params = {
        "sid": sid,
        "user_id": user_id,
        "refresh_hash": refresh_hash,
        "now": now,
        "expires_at": expires_at,
        "ip": ip,
        "user_agent": (user_agent or "")[:512] or None,
        "client_id": client_id,
    }
    if tx.conn.dialect.name == "postgresql":
        return _user((await tx.execute(_OPEN_SESSION_IN_ONE, params)).first())
    for statement in (_INSERT_SESSION, _INSERT_REFRESH):
        await tx.execute(statement, params)
    return _user((await tx.execute(_RECORD_LOGIN, params)).first())


async def touch_session(
    tx: Tx, *, sid: str, now: datetime, expires_at: datetime, ip: str | None, user_agent: str | None
) -> None:
    values: dict[str, Any] = {"last_used_at": now, "expires_at": expires_at, "ip": ip}
    if user_agent:
        values["user_agent"] = user_agent[:512]
    await tx.execute(sa.update(sessions).where(sessions.c.id == sid).values(**values))


async def active_session_ids(tx: Tx, *, user_id: str, now: datetime, except_sid: str | None = None) -> list[str]:
    stmt = sa.select(sessions.c.id).where(sessions.c.user_id == user_id, _active_sessions(now))
    if except_sid is not None:
        stmt = stmt.where(sessions.c.id != except_sid)
    return list((await tx.execute(stmt)).scalars())


async def list_sessions(tx: Tx, *, user_id: str, now: datetime) -> list[SessionRow]:
    stmt = (
        sa.select(sessions.c.id, sessions.c.created_at, sessions.c.last_used_at, sessions.c.ip, sessions.c.user_agent)
        .where(sessions.c.user_id == user_id, _active_sessions(now))
        .order_by(sessions.c.last_used_at.desc())
    )
    return [
        SessionRow(row.id, row.created_at, row.last_used_at, row.ip, row.user_agent) for row in await tx.execute(stmt)
    ]


async def session_owner(tx: Tx, *, sid: str) -> str | None:
    result = await tx.execute(sa.select(sessions.c.user_id).where(sessions.c.id == sid))
    return result.scalar_one_or_none()


async def insert_refresh(tx: Tx, *, token_hash: str, sid: str, now: datetime, expires_at: datetime) -> None:
    await tx.execute(_INSERT_REFRESH, {"refresh_hash": token_hash, "sid": sid, "now": now, "expires_at": expires_at})


async def refresh_by_hash(tx: Tx, *, token_hash: str) -> RefreshRow | None:
    stmt = (
        sa.select(
            refresh_tokens,
            sessions.c.user_id,
            sessions.c.client_id,
            sessions.c.revoked_at.is_not(None).label("session_revoked"),
            users.c.role.label("user_role"),
            users.c.disabled.label("user_disabled"),
            users.c.mfa_enabled.label("user_mfa_enabled"),
        )
        .join(sessions, sessions.c.id == refresh_tokens.c.session_id)
        .join(users, users.c.id == sessions.c.user_id)
        .where(refresh_tokens.c.token_hash == token_hash)
    )
    row = (await tx.execute(stmt)).first()
    if row is None:
        return None
    return RefreshRow(
        token_hash=row.token_hash,
        session_id=row.session_id,
        expires_at=row.expires_at,
        used_at=row.used_at,
        successor_hash=row.successor_hash,
        grace_box=row.grace_box,
        created_at=row.created_at,
        user_id=row.user_id,
        session_revoked=bool(row.session_revoked),
        user_role=row.user_role,
        user_disabled=bool(row.user_disabled),
        client_id=row.client_id,
        user_mfa_enabled=bool(row.user_mfa_enabled),
    )


async def consume_refresh(tx: Tx, *, token_hash: str, now: datetime, successor_hash: str, grace_box: bytes) -> bool:
    """Mark a refresh token used; False when another request used it first (one winner)."""
    result = await tx.execute(
        sa.update(refresh_tokens)
        .where(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.used_at.is_(None))
        .values(used_at=now, successor_hash=successor_hash, grace_box=grace_box)
    )
    return result.rowcount == 1


async def list_events(
    tx: Tx,
    *,
    type: str | None,
    user_id: str | None,
    device_uid: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[Event], int]:
    where = []
    if type:
        where.append(events.c.type == type)
    if user_id:
        where.append(events.c.actor_id == user_id)
    if device_uid:
        where.append(events.c.device_uid == device_uid)
    if since:
        where.append(events.c.ts >= since)
    total = (await tx.execute(sa.select(sa.func.count()).select_from(events).where(*where))).scalar_one()
    rows = await tx.execute(sa.select(events).where(*where).order_by(events.c.id.desc()).limit(limit).offset(offset))
    return [event_from_row(row) for row in rows], int(total)


async def events_after(tx: Tx, *, after: int, limit: int) -> list[Event]:
    stmt = sa.select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
    return [event_from_row(row) for row in await tx.execute(stmt)]


async def count_events_since(tx: Tx, *, type: str, since: datetime) -> int:
    stmt = sa.select(sa.func.count()).select_from(events).where(events.c.type == type, events.c.ts >= since)
    return int((await tx.execute(stmt)).scalar_one())


async def count_active_sessions(tx: Tx, *, now: datetime) -> int:
    stmt = sa.select(sa.func.count()).select_from(sessions).where(_active_sessions(now))
    return int((await tx.execute(stmt)).scalar_one())


async def count_devices(tx: Tx) -> tuple[int, int]:
    """(devices, devices online)."""
    devices = tables.devices
    total = (await tx.execute(sa.select(sa.func.count()).select_from(devices))).scalar_one()
    online = (
        await tx.execute(sa.select(sa.func.count()).select_from(devices).where(devices.c.online.is_(True)))
    ).scalar_one()
    return int(total), int(online)


def _hour_of(column: sa.ColumnElement[datetime], dialect: str) -> sa.ColumnElement[datetime]:
    """The UTC hour an instant falls in, read back as an aware datetime. No SQL function does this on
    both databases, so each gets its own; the constants are literal SQL because PostgreSQL wants the
    grouped expression to be identical in SELECT and GROUP BY, which two bind parameters are not."""
    if dialect == "postgresql":
        hour = sa.func.date_trunc(sa.literal_column("'hour'"), sa.func.timezone(sa.literal_column("'UTC'"), column))
    else:
        hour = sa.func.strftime(sa.literal_column("'%Y-%m-%d %H:00:00'"), column)  # SQLite keeps UTC text
    return sa.type_coerce(hour, tables.UTCDateTime())


async def count_events_by_hour(tx: Tx, *, types: list[str], since: datetime) -> list[tuple[str, datetime, int]]:
    """(type, UTC hour, count) of the events of these types since `since`: at most one row per type
    and hour, however busy the hour was."""
    hour = _hour_of(events.c.ts, tx.conn.dialect.name)
    stmt = (
        sa.select(events.c.type, hour.label("hour"), sa.func.count().label("events"))
        .where(events.c.type.in_(types), events.c.ts >= since)
        .group_by(events.c.type, hour)
    )
    rows: list[Any] = list(await tx.execute(stmt))
    return [(row.type, row.hour, int(row.events)) for row in rows]
