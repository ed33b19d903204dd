"""SQL of the second factor (SPEC §12): TOTP secrets, recovery codes, mfa tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from shared import tables
from shared.db import Tx

users, totp, recovery, mfa_tokens = tables.users, tables.user_totp, tables.recovery_codes, tables.mfa_tokens


@dataclass(frozen=True)
class TotpRow:
    user_id: str
    secret_box: bytes
    confirmed: bool
    last_step: int | None


@dataclass(frozen=True)
class MfaTokenRow:
    user_id: str
    ip: str | None
    expires_at: datetime
    used: bool


async def totp_of(tx: Tx, *, user_id: str) -> TotpRow | None:
    row = (await tx.execute(sa.select(totp).where(totp.c.user_id == user_id))).first()
    if row is None:
        return None
    return TotpRow(row.user_id, bytes(row.secret_box), row.confirmed_at is not None, row.last_step)


async def put_pending_totp(tx: Tx, *, user_id: str, secret_box: bytes, now: datetime) -> None:
    """A new, unconfirmed secret in place of any earlier unconfirmed one."""
    await tx.execute(sa.delete(totp).where(totp.c.user_id == user_id, totp.c.confirmed_at.is_(None)))
    await tx.execute(sa.insert(totp).values(user_id=user_id, secret_box=secret_box, created_at=now))


async def use_step(tx: Tx, *, user_id: str, step: int, confirmed: bool) -> bool:
    """Record `step` as the last one used, if it is later than the last one: False when it is not
    (a replay, or a parallel request with the same code got there first). One conditional UPDATE, so
    two submissions of one code cannot both succeed, on either database."""
    result = await tx.execute(
        sa.update(totp)
        .where(
            totp.c.user_id == user_id,
            totp.c.confirmed_at.is_not(None) if confirmed else totp.c.confirmed_at.is_(None),
            sa.or_(totp.c.last_step.is_(None), totp.c.last_step < step),
        )
        .values(last_step=step)
    )
    return result.rowcount == 1


async def confirm_totp(tx: Tx, *, user_id: str, now: datetime) -> None:
    await tx.execute(sa.update(totp).where(totp.c.user_id == user_id).values(confirmed_at=now))
    await tx.execute(sa.update(users).where(users.c.id == user_id).values(mfa_enabled=True, updated_at=now))


async def replace_recovery_codes(tx: Tx, *, user_id: str, code_hashes: list[str], now: datetime) -> None:
    await tx.execute(sa.delete(recovery).where(recovery.c.user_id == user_id))
    await tx.execute(
        sa.insert(recovery), [{"user_id": user_id, "code_hash": h, "created_at": now} for h in code_hashes]
    )


async def use_recovery_code(tx: Tx, *, user_id: str, code_hash: str, now: datetime) -> bool:
    """Use a recovery code up; False when it is not one of the user's unused codes."""
    result = await tx.execute(
        sa.update(recovery)
        .where(recovery.c.user_id == user_id, recovery.c.code_hash == code_hash, recovery.c.used_at.is_(None))
        .values(used_at=now)
    )
    return result.rowcount == 1


async def recovery_codes_left(tx: Tx, *, user_id: str) -> int:
    stmt = sa.select(sa.func.count()).where(recovery.c.user_id == user_id, recovery.c.used_at.is_(None))
    return int((await tx.execute(stmt)).scalar_one())


async def remove_factor(tx: Tx, *, user_id: str, now: datetime) -> None:
    await tx.execute(sa.delete(totp).where(totp.c.user_id == user_id))
    await tx.execute(sa.delete(recovery).where(recovery.c.user_id == user_id))
    await tx.execute(sa.delete(mfa_tokens).where(mfa_tokens.c.user_id == user_id))
    await tx.execute(sa.update(users).where(users.c.id == user_id).values(mfa_enabled=False, updated_at=now))


async def user_mfa_enabled(tx: Tx, *, user_id: str) -> bool:
    found = (await tx.execute(sa.select(users.c.mfa_enabled).where(users.c.id == user_id))).scalar()
    return bool(found)


async def insert_mfa_token(
    tx: Tx, *, token_hash: str, user_id: str, ip: str | None, now: datetime, expires_at: datetime
) -> None:
    await tx.execute(
        sa.insert(mfa_tokens).values(
            token_hash=token_hash, user_id=user_id, ip=ip, created_at=now, expires_at=expires_at
        )
    )
    # Expired ones of this user go: the table holds what is live, not every login ever made.
    await tx.execute(sa.delete(mfa_tokens).where(mfa_tokens.c.user_id == user_id, mfa_tokens.c.expires_at < now))


async def mfa_token_by_hash(tx: Tx, *, token_hash: str) -> MfaTokenRow | None:
    row = (await tx.execute(sa.select(mfa_tokens).where(mfa_tokens.c.token_hash == token_hash))).first()
    if row is None:
        return None
    return MfaTokenRow(row.user_id, row.ip, row.expires_at, row.used_at is not None)


async def consume_mfa_token(tx: Tx, *, token_hash: str, now: datetime) -> bool:
    """Use an mfa token up; False when it is used, expired or unknown (one winner in a race)."""
    result = await tx.execute(
        sa.update(mfa_tokens)
        .where(mfa_tokens.c.token_hash == token_hash, mfa_tokens.c.used_at.is_(None), mfa_tokens.c.expires_at > now)
        .values(used_at=now)
    )
    return result.rowcount == 1
