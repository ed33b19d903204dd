"""SQL of the device connector: roles (read), presence, reported and desired state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared import tables
from shared.db import Tx
from shared.models import DeviceRole

devices, shares, state = tables.devices, tables.device_shares, tables.device_state


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A device's last reported state and the state its users want (JSON documents), with their times."""

    uid: str
    reported: Any
    reported_at: datetime | None
    desired: Any
    desired_at: datetime | None


# The statements of a CONNECT, a command and presence, built once (building one and its cache key
# costs more CPU than running it), executed with a dict of parameters. (An UPDATE's parameters may not
# bear its table's column names: SQLAlchemy keeps those for the SET clause.)
_OWNED_BY = sa.select(devices.c.uid).where(devices.c.owner_id == sa.bindparam("user_id"))
_SHARED_WITH = sa.select(shares.c.uid, shares.c.role).where(shares.c.user_id == sa.bindparam("user_id"))
_OWNER_OF = sa.select(devices.c.owner_id).where(devices.c.uid == sa.bindparam("uid"))
_SHARES_OF = sa.select(shares.c.user_id, shares.c.role).where(shares.c.uid == sa.bindparam("uid"))
_SET_PRESENCE = (
    sa.update(devices)
    .where(devices.c.uid == sa.bindparam("device"))
    .values(
        online=sa.bindparam("is_online"),
        connected_at=sa.bindparam("since"),
        last_seen=sa.bindparam("now"),
        ip=sa.bindparam("address"),
        region=sa.bindparam("country"),
    )
)
_SET_OFFLINE = (
    sa.update(devices)
    .where(devices.c.uid == sa.bindparam("device"))
    .values(online=False, last_seen=sa.bindparam("now"))
)


async def roles_of_user(tx: Tx, *, user_id: str) -> dict[str, DeviceRole]:
    owned = await tx.execute(_OWNED_BY, {"user_id": user_id})
    roles = dict.fromkeys(owned.scalars(), DeviceRole.OWNER)
    for uid, role in await tx.execute(_SHARED_WITH, {"user_id": user_id}):
        roles.setdefault(uid, DeviceRole(role))
    return roles


async def roles_on_device(tx: Tx, *, uid: str) -> dict[str, DeviceRole]:
    """user id -> role, for everybody with a role on the device."""
    found: dict[str, DeviceRole] = {}
    owner = (await tx.execute(_OWNER_OF, {"uid": uid})).scalar_one_or_none()
    for user_id, role in await tx.execute(_SHARES_OF, {"uid": uid}):
        found[user_id] = DeviceRole(role)
    if owner:
        found[owner] = DeviceRole.OWNER
    return found


async def role_of(tx: Tx, *, uid: str, user_id: str) -> DeviceRole | None:
    return (await roles_on_device(tx, uid=uid)).get(user_id)


async def device_exists(tx: Tx, *, uid: str) -> bool:
    return (await tx.execute(sa.select(devices.c.uid).where(devices.c.uid == uid))).first() is not None


async def set_presence_many(tx: Tx, *, connected: list[dict[str, Any]], disconnected: list[dict[str, Any]]) -> None:
    """Presence of many devices, one statement each way (executemany). `connected`: devices that
    connected (and maybe left again) in the batch, rows of device, is_online, since, now, address,
    country; `disconnected`: devices that only left, rows of device and now."""
    if connected:
        await tx.execute(_SET_PRESENCE, connected)
    if disconnected:
        await tx.execute(_SET_OFFLINE, disconnected)


async def put_reported_many(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """Reported state of many devices (rows of uid, reported, reported_at), one upsert."""
    if not rows:
        return
    insert = sqlite_insert if tx.conn.dialect.name == "sqlite" else postgresql_insert
    statement = insert(state)
    statement = statement.on_conflict_do_update(
        index_elements=[state.c.uid],
        set_={"reported": statement.excluded.reported, "reported_at": statement.excluded.reported_at},
    )
    await tx.execute(statement, rows)


async def mark_offline_except(tx: Tx, *, live: set[str], now: datetime) -> list[str]:
    """Every device marked online but not in `live` goes offline; those it took offline."""
    online = (await tx.execute(sa.select(devices.c.uid).where(devices.c.online.is_(True)))).scalars()
    stale = sorted(set(online) - live)
    for start in range(0, len(stale), 500):
        chunk = stale[start : start + 500]
        await tx.execute(sa.update(devices).where(devices.c.uid.in_(chunk)).values(online=False, last_seen=now))
    return stale


async def offline_among(tx: Tx, *, uids: list[str]) -> list[str]:
    """Those of `uids` the database has offline."""
    found: list[str] = []
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        query = sa.select(devices.c.uid).where(devices.c.uid.in_(chunk), devices.c.online.is_(False))
        found.extend((await tx.execute(query)).scalars())
    return sorted(found)


def _state(row: sa.Row[Any]) -> DeviceState:
    return DeviceState(row.uid, row.reported, row.reported_at, row.desired, row.desired_at)


async def get_state(tx: Tx, *, uid: str) -> DeviceState | None:
    row = (await tx.execute(sa.select(state).where(state.c.uid == uid))).first()
    return None if row is None else _state(row)


async def put_state(tx: Tx, *, uid: str, **values: Any) -> None:
    updated = await tx.execute(sa.update(state).where(state.c.uid == uid).values(**values))
    if not updated.rowcount:
        await tx.execute(sa.insert(state).values(uid=uid, **values))


async def all_states(tx: Tx) -> list[DeviceState]:
    return [_state(row) for row in await tx.execute(sa.select(state))]


async def user_role(tx: Tx, *, user_id: str) -> str | None:
    users = tables.users
    row = (await tx.execute(sa.select(users.c.role, users.c.disabled).where(users.c.id == user_id))).first()
    return None if row is None or row.disabled else str(row.role)
