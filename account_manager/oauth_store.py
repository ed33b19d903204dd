"""SQL of the OAuth 2 side: registered clients, hosted-page logins, authorization codes, device codes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from shared import tables
from shared.db import Tx

clients, hosted_logins, codes = tables.oauth_clients, tables.hosted_logins, tables.oauth_codes
device_codes, sessions, users = tables.oauth_device_codes, tables.sessions, tables.users
# Used and expired codes are kept this long past their expiry, so that a late replay still finds
# what it was and revokes what it issued (RFC 6749 §4.1.2), then pruned.
KEEP_EXPIRED = timedelta(minutes=10)


class UserCodeTakenError(Exception):
    """A live device code has this user code already (the unique index refused the second)."""


@dataclass(frozen=True, slots=True)
class ClientRow:
    id: str
    name: str
    secret_hash: str | None
    redirect_uris: list[str]
    grant_types: list[str]
    created_at: datetime
    created_by: str | None


@dataclass(frozen=True, slots=True)
class HostedLogin:
    session_id: str
    user_id: str
    username: str
    role: str


@dataclass(frozen=True, slots=True)
class CodeRow:
    client_id: str
    user_id: str
    redirect_uri: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: datetime
    used_at: datetime | None
    session_id: str | None
    usable: bool  # its approving session is live and its user enabled
    user_role: str


@dataclass(frozen=True, slots=True)
class DeviceCodeRow:
    device_code_hash: str
    client_id: str
    client_name: str
    expires_at: datetime
    interval: int
    last_polled_at: datetime | None
    status: str
    user_id: str | None
    user_role: str | None
    user_disabled: bool


def _client(row: sa.Row[Any]) -> ClientRow:
    return ClientRow(
        id=row.id,
        name=row.name,
        secret_hash=row.secret_hash,
        redirect_uris=list(row.redirect_uris),
        grant_types=list(row.grant_types),
        created_at=row.created_at,
        created_by=row.created_by,
    )


# --- clients --------------------------------------------------------------------------------------


async def insert_client(tx: Tx, *, client: ClientRow) -> None:
    await tx.execute(
        sa.insert(clients).values(
            id=client.id,
            name=client.name,
            secret_hash=client.secret_hash,
            redirect_uris=client.redirect_uris,
            grant_types=client.grant_types,
            created_at=client.created_at,
            created_by=client.created_by,
        )
    )


async def client_by_id(tx: Tx, *, client_id: str) -> ClientRow | None:
    row = (await tx.execute(sa.select(clients).where(clients.c.id == client_id))).first()
    return None if row is None else _client(row)


async def list_clients(tx: Tx, *, limit: int, offset: int) -> tuple[list[ClientRow], int]:
    total = (await tx.execute(sa.select(sa.func.count()).select_from(clients))).scalar_one()
    stmt = sa.select(clients).order_by(clients.c.created_at.desc(), clients.c.id).limit(limit).offset(offset)
    return [_client(row) for row in await tx.execute(stmt)], int(total)


async def delete_client(tx: Tx, *, client_id: str) -> bool:
    """Its codes and device codes go with it (foreign keys)."""
    result = await tx.execute(sa.delete(clients).where(clients.c.id == client_id))
    return result.rowcount == 1


async def client_session_ids(tx: Tx, *, client_id: str, now: datetime) -> list[str]:
    stmt = sa.select(sessions.c.id).where(
        sessions.c.client_id == client_id, sessions.c.revoked_at.is_(None), sessions.c.expires_at > now
    )
    return list((await tx.execute(stmt)).scalars())


# --- hosted-page logins ---------------------------------------------------------------------------


async def open_hosted_login(
    tx: Tx,
    *,
    token_hash: str,
    sid: str,
    user_id: str,
    now: datetime,
    expires_at: datetime,
    ip: str | None,
    user_agent: str | None,
) -> None:
    """A session without a refresh token (a browser holds only its cookie), and the cookie's row."""
    await tx.execute(
        sa.insert(sessions).values(
            id=sid,
            user_id=user_id,
            created_at=now,
            last_used_at=now,
            expires_at=expires_at,
            ip=ip,
            user_agent=(user_agent or "")[:512] or None,
        )
    )
    await tx.execute(
        sa.insert(hosted_logins).values(token_hash=token_hash, session_id=sid, created_at=now, expires_at=expires_at)
    )
    await tx.execute(sa.update(users).where(users.c.id == user_id).values(last_login_at=now, updated_at=now))
    await tx.execute(sa.delete(hosted_logins).where(hosted_logins.c.expires_at < now - KEEP_EXPIRED))


async def hosted_login(tx: Tx, *, token_hash: str, now: datetime) -> HostedLogin | None:
    """The live login a cookie stands for: not expired, its session not revoked, its user enabled."""
    stmt = (
        sa.select(sessions.c.id, users.c.id.label("user_id"), users.c.username, users.c.role)
        .select_from(hosted_logins)
        .join(sessions, sessions.c.id == hosted_logins.c.session_id)
        .join(users, users.c.id == sessions.c.user_id)
        .where(
            hosted_logins.c.token_hash == token_hash,
            hosted_logins.c.expires_at > now,
            sessions.c.revoked_at.is_(None),
            users.c.disabled.is_(False),
        )
    )
    row = (await tx.execute(stmt)).first()
    return None if row is None else HostedLogin(row.id, row.user_id, row.username, row.role)


# --- authorization codes --------------------------------------------------------------------------


async def insert_code(tx: Tx, **values: Any) -> None:
    await tx.execute(sa.insert(codes).values(**values))
    await tx.execute(sa.delete(codes).where(codes.c.expires_at < values["created_at"] - KEEP_EXPIRED))


async def code_by_hash(tx: Tx, *, code_hash: str) -> CodeRow | None:
    login = sessions.alias("login")
    usable = sa.and_(login.c.revoked_at.is_(None), users.c.disabled.is_(False)).label("usable")
    stmt = (
        sa.select(codes, usable, users.c.role.label("user_role"))
        .join(login, login.c.id == codes.c.login_session_id)
        .join(users, users.c.id == codes.c.user_id)
        .where(codes.c.code_hash == code_hash)
    )
    row = (await tx.execute(stmt)).first()
    if row is None:
        return None
    return CodeRow(
        client_id=row.client_id,
        user_id=row.user_id,
        redirect_uri=row.redirect_uri,
        code_challenge=row.code_challenge,
        code_challenge_method=row.code_challenge_method,
        expires_at=row.expires_at,
        used_at=row.used_at,
        session_id=row.session_id,
        usable=bool(row.usable),
        user_role=row.user_role,
    )


async def consume_code(tx: Tx, *, code_hash: str, now: datetime) -> bool:
    """Mark a code used; False when another redemption used it first (one winner)."""
    result = await tx.execute(
        sa.update(codes).where(codes.c.code_hash == code_hash, codes.c.used_at.is_(None)).values(used_at=now)
    )
    return result.rowcount == 1


async def set_code_session(tx: Tx, *, code_hash: str, sid: str) -> None:
    await tx.execute(sa.update(codes).where(codes.c.code_hash == code_hash).values(session_id=sid))


# --- device codes ---------------------------------------------------------------------------------


async def insert_device_code(
    tx: Tx,
    *,
    device_code_hash: str,
    user_code_hash: str,
    client_id: str,
    created_at: datetime,
    expires_at: datetime,
    poll_interval: int,
) -> None:
    """UserCodeTakenError when a stored code has this user code (the caller draws another)."""
    await tx.execute(sa.delete(device_codes).where(device_codes.c.expires_at < created_at - KEEP_EXPIRED))
    try:
        await tx.execute(
            sa.insert(device_codes).values(
                status="pending",
                device_code_hash=device_code_hash,
                user_code_hash=user_code_hash,
                client_id=client_id,
                created_at=created_at,
                expires_at=expires_at,
                poll_interval=poll_interval,
            )
        )
    except sa.exc.IntegrityError:
        raise UserCodeTakenError() from None


def _device_select() -> sa.Select[Any]:
    return (
        sa.select(
            device_codes,
            clients.c.name.label("client_name"),
            users.c.role.label("user_role"),
            sa.func.coalesce(users.c.disabled, False).label("user_disabled"),
        )
        .join(clients, clients.c.id == device_codes.c.client_id)
        .outerjoin(users, users.c.id == device_codes.c.user_id)
    )


def _device(row: sa.Row[Any] | None) -> DeviceCodeRow | None:
    if row is None:
        return None
    return DeviceCodeRow(
        device_code_hash=row.device_code_hash,
        client_id=row.client_id,
        client_name=row.client_name,
        expires_at=row.expires_at,
        interval=int(row.poll_interval),
        last_polled_at=row.last_polled_at,
        status=row.status,
        user_id=row.user_id,
        user_role=row.user_role,
        user_disabled=bool(row.user_disabled),
    )


async def device_code_by_hash(tx: Tx, *, device_code_hash: str) -> DeviceCodeRow | None:
    stmt = _device_select().where(device_codes.c.device_code_hash == device_code_hash)
    return _device((await tx.execute(stmt)).first())


async def device_code_by_user_code(tx: Tx, *, user_code_hash: str) -> DeviceCodeRow | None:
    stmt = _device_select().where(device_codes.c.user_code_hash == user_code_hash)
    return _device((await tx.execute(stmt)).first())


async def record_poll(tx: Tx, *, device_code_hash: str, now: datetime, interval: int) -> None:
    await tx.execute(
        sa.update(device_codes)
        .where(device_codes.c.device_code_hash == device_code_hash)
        .values(last_polled_at=now, poll_interval=interval)
    )


async def decide_device_code(tx: Tx, *, user_code_hash: str, user_id: str, status: str, now: datetime) -> bool:
    """Approve or deny a pending, unexpired code; False when it is neither any more."""
    result = await tx.execute(
        sa.update(device_codes)
        .where(
            device_codes.c.user_code_hash == user_code_hash,
            device_codes.c.status == "pending",
            device_codes.c.expires_at > now,
        )
        .values(status=status, user_id=user_id, decided_at=now)
    )
    return result.rowcount == 1


async def redeem_device_code(tx: Tx, *, device_code_hash: str, sid: str) -> bool:
    """Mark an approved code redeemed by the session it opened; False when another poll won."""
    result = await tx.execute(
        sa.update(device_codes)
        .where(device_codes.c.device_code_hash == device_code_hash, device_codes.c.status == "approved")
        .values(status="redeemed", session_id=sid)
    )
    return result.rowcount == 1
