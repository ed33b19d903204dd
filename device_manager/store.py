"""SQL of the device manager: devices, shares, pairing tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared import tables
from shared.db import Tx
from shared.device_lists import VISIBLE, DeviceEntry
from shared.models import DeviceRole
from shared.search import one_of, starts_with

devices, shares, pairing, users = tables.devices, tables.device_shares, tables.pairing_tokens, tables.users


@dataclass(frozen=True, slots=True)
class DeviceRow:
    uid: str
    model: str
    name: str | None
    secret_hash: str
    claim_code_hash: str
    owner_id: str | None
    disabled: bool
    online: bool
    last_seen: datetime | None
    connected_at: datetime | None
    ip: str | None
    region: str | None


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """A device as the operators' list shows it: its status and owner, not its secrets."""

    uid: str
    name: str | None
    model: str
    owner_id: str | None
    owner_username: str | None
    online: bool
    last_seen: datetime | None
    connected_at: datetime | None
    ip: str | None
    region: str | None
    disabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ShareRow:
    user_id: str
    username: str
    role: DeviceRole
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UserRef:
    id: str
    username: str


def _device(row: sa.Row[Any] | None) -> DeviceRow | None:
    if row is None:
        return None
    return DeviceRow(
        uid=row.uid,
        model=row.model,
        name=row.name,
        secret_hash=row.secret_hash,
        claim_code_hash=row.claim_code_hash,
        owner_id=row.owner_id,
        disabled=row.disabled,
        online=row.online,
        last_seen=row.last_seen,
        connected_at=row.connected_at,
        ip=row.ip,
        region=row.region,
    )


async def insert_devices(tx: Tx, *, rows: Sequence[dict[str, Any]]) -> None:
    await tx.execute(sa.insert(devices), list(rows))


async def existing_uids(tx: Tx, *, uids: Sequence[str]) -> list[str]:
    result = await tx.execute(sa.select(devices.c.uid).where(devices.c.uid.in_(list(uids))))
    return list(result.scalars())


async def device(tx: Tx, *, uid: str, lock: bool = False) -> DeviceRow | None:
    """The device; with `lock`, its row stays locked until the transaction ends, so that two changes
    decided on the same owner (two transfers, a transfer and an unbind) run one after the other and
    the second sees the first's outcome (SPEC §11: one winner)."""
    statement = sa.select(devices).where(devices.c.uid == uid)
    return _device((await tx.execute(statement.with_for_update() if lock else statement)).first())


async def claim(tx: Tx, *, uid: str, user_id: str, now: datetime) -> bool:
    """Give an unowned device an owner; False when somebody else got it first (one winner)."""
    result = await tx.execute(
        sa.update(devices)
        .where(devices.c.uid == uid, devices.c.owner_id.is_(None))
        .values(owner_id=user_id, bound_at=now)
    )
    return result.rowcount == 1


async def release(tx: Tx, *, uid: str) -> list[str]:
    """Remove the owner and every share; the user ids that lost access."""
    row = await device(tx, uid=uid, lock=tx.write)
    lost = [row.owner_id] if row is not None and row.owner_id else []
    lost += await share_user_ids(tx, uid=uid)
    await tx.execute(sa.delete(shares).where(shares.c.uid == uid))
    await tx.execute(sa.update(devices).where(devices.c.uid == uid).values(owner_id=None, bound_at=None))
    return lost


async def set_owner(tx: Tx, *, uid: str, user_id: str, now: datetime) -> None:
    await tx.execute(sa.update(devices).where(devices.c.uid == uid).values(owner_id=user_id, bound_at=now))


async def update_device(tx: Tx, *, uid: str, **values: Any) -> None:
    await tx.execute(sa.update(devices).where(devices.c.uid == uid).values(**values))


async def share_role(tx: Tx, *, uid: str, user_id: str) -> str | None:
    result = await tx.execute(sa.select(shares.c.role).where(shares.c.uid == uid, shares.c.user_id == user_id))
    return result.scalar_one_or_none()


async def share_user_ids(tx: Tx, *, uid: str) -> list[str]:
    return list((await tx.execute(sa.select(shares.c.user_id).where(shares.c.uid == uid))).scalars())


async def put_share(tx: Tx, *, uid: str, user_id: str, role: str, now: datetime) -> None:
    await tx.execute(sa.delete(shares).where(shares.c.uid == uid, shares.c.user_id == user_id))
    await tx.execute(sa.insert(shares).values(uid=uid, user_id=user_id, role=role, created_at=now))


async def delete_share(tx: Tx, *, uid: str, user_id: str) -> bool:
    result = await tx.execute(sa.delete(shares).where(shares.c.uid == uid, shares.c.user_id == user_id))
    return result.rowcount > 0


async def list_shares(tx: Tx, *, uid: str) -> list[ShareRow]:
    stmt = (
        sa.select(shares.c.user_id, users.c.username, shares.c.role, shares.c.created_at)
        .join(users, users.c.id == shares.c.user_id)
        .where(shares.c.uid == uid)
        .order_by(shares.c.created_at)
    )
    return [ShareRow(r.user_id, r.username, DeviceRole(r.role), r.created_at) for r in await tx.execute(stmt)]


async def user_by_username(tx: Tx, *, username: str) -> UserRef | None:
    stmt = sa.select(users.c.id, users.c.username).where(users.c.username_key == username.lower())
    row = (await tx.execute(stmt)).first()
    return None if row is None else UserRef(row.id, row.username)


# One page of the devices a user can see (shared.device_lists.VISIBLE) with the total, in one statement
# (the window's count is taken before LIMIT). Built once: building a statement and its cache key costs
# more than the database takes to run it (PERF §5).
_PAGE_FOR_USER = (
    sa.select(
        devices.c.uid,
        devices.c.name,
        devices.c.model,
        devices.c.online,
        devices.c.last_seen,
        VISIBLE.c.role,
        sa.func.count().over().label("total"),
    )
    .join(VISIBLE, VISIBLE.c.uid == devices.c.uid)
    .order_by(devices.c.uid)
    .limit(sa.bindparam("limit", type_=sa.Integer))
    .offset(sa.bindparam("offset", type_=sa.Integer))
)
_COUNT_FOR_USER = sa.select(sa.func.count()).select_from(VISIBLE)


async def list_for_user(tx: Tx, *, user_id: str, limit: int, offset: int) -> tuple[list[DeviceEntry], int]:
    """One page of the user's devices and how many in all."""
    rows = list(await tx.execute(_PAGE_FOR_USER, {"user_id": user_id, "limit": limit, "offset": offset}))
    page = [DeviceEntry(r.uid, r.name, r.model, DeviceRole(r.role), bool(r.online), r.last_seen) for r in rows]
    if rows:
        return page, int(rows[0].total)
    if offset == 0:
        return page, 0
    # A page past the end: the total still counts.
    return page, int((await tx.execute(_COUNT_FOR_USER, {"user_id": user_id})).scalar_one())


# A UID is 20 characters of [A-Z0-9] (SPEC §2): a query of other characters names no UID.
_UID_PREFIX = re.compile(r"[A-Za-z0-9]{1,20}")


def _matches(query: str, dialect: str) -> sa.ColumnElement[bool]:
    """The device's UID, model or owner's username begins with `query` (case aside): three index
    ranges joined by OR (see shared.search), so a search costs what it finds, not the fleet."""
    owner = users.alias("owner")
    key = query.lower()
    owners = sa.select(owner.c.id).where(starts_with(owner.c.username_key, key)).scalar_subquery()
    terms = [starts_with(sa.func.lower(devices.c.model), key), one_of(devices.c.owner_id, owners, dialect=dialect)]
    if _UID_PREFIX.fullmatch(query):
        terms.append(starts_with(devices.c.uid, query.upper()))
    return sa.or_(*terms)


async def list_all(
    tx: Tx,
    *,
    query: str | None,
    online: bool | None,
    model: str | None,
    owner_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[FleetDevice], int]:
    """A page of every device, newest first (the index on created_at, uid walks it), and the total."""
    where: list[sa.ColumnElement[bool]] = []
    if query:
        where.append(_matches(query, tx.conn.dialect.name))
    if online is not None:
        where.append(devices.c.online.is_(online))
    if model:
        where.append(devices.c.model == model)
    if owner_id:
        where.append(devices.c.owner_id == owner_id)
    total = (await tx.execute(sa.select(sa.func.count()).select_from(devices).where(*where))).scalar_one()
    # The owner's name as a lookup by primary key per row, not a join: a join at fleet size makes the
    # planners hash both tables and sort, where the lookup keeps the walk of the index in order.
    owner_username = sa.select(users.c.username).where(users.c.id == devices.c.owner_id).scalar_subquery()
    stmt = (
        sa.select(devices, owner_username.label("owner_username"))
        .where(*where)
        .order_by(devices.c.created_at.desc(), devices.c.uid)
        .limit(limit)
        .offset(offset)
    )
    page = [
        FleetDevice(
            uid=r.uid,
            name=r.name,
            model=r.model,
            owner_id=r.owner_id,
            owner_username=r.owner_username,
            online=bool(r.online),
            last_seen=r.last_seen,
            connected_at=r.connected_at,
            ip=r.ip,
            region=r.region,
            disabled=bool(r.disabled),
            created_at=r.created_at,
        )
        for r in await tx.execute(stmt)
    ]
    return page, int(total)


async def insert_pairing_token(tx: Tx, *, token_hash: str, user_id: str, now: datetime, expires_at: datetime) -> None:
    await tx.execute(
        sa.insert(pairing).values(token_hash=token_hash, user_id=user_id, created_at=now, expires_at=expires_at)
    )


async def redeem_pairing_token(tx: Tx, *, token_hash: str, uid: str, now: datetime) -> str | None:
    """Use a pairing token once; the user who asked for it, or None (unknown, used or expired)."""
    row = (
        await tx.execute(
            sa.select(pairing.c.user_id).where(
                pairing.c.token_hash == token_hash, pairing.c.used_at.is_(None), pairing.c.expires_at > now
            )
        )
    ).first()
    if row is None:
        return None
    result = await tx.execute(
        sa.update(pairing)
        .where(pairing.c.token_hash == token_hash, pairing.c.used_at.is_(None))
        .values(used_at=now, uid=uid)
    )
    return row.user_id if result.rowcount == 1 else None
