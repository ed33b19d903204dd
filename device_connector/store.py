"""SQL of the device connector: roles (read), presence, reported and desired state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared import tables
from shared.db import Tx
from shared.models import DeviceRole

devices, shares, state = tables.devices, tables.device_shares, tables.device_state

# The statements of a CONNECT, a command and presence, built once (building one and its cache key
# costs more CPU than running it), executed with a dict of parameters. (An UPDATE's parameters may not
# bear its table's column names: SQLAlchemy keeps those for the SET clause.)
_b = sa.bindparam
_OWNED_BY = sa.select(devices.c.uid).where(devices.c.owner_id == _b("user_id"))
_SHARED_WITH = sa.select(shares.c.uid, shares.c.role).where(shares.c.user_id == _b("user_id"))
_OWNER_OF = sa.select(devices.c.owner_id).where(devices.c.uid == _b("uid"))
_SHARES_OF = sa.select(shares.c.user_id, shares.c.role).where(shares.c.uid == _b("uid"))
_SET_ONLINE = (
    sa.update(devices)
    .where(devices.c.uid == _b("device"))
    .values(online=True, connected_at=_b("now"), last_seen=_b("now"), ip=_b("address"), region=_b("country"))
)
_SET_OFFLINE = sa.update(devices).where(devices.c.uid == _b("device")).values(online=False, last_seen=_b("now"))


async def roles_of_user(tx: Tx, *, user_id: str) -> dict[str, DeviceRole]:
    owned = await tx.execute(_OWNED_BY, {"user_id": user_id})
    roles = {uid: DeviceRole.OWNER for uid in owned.scalars()}
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


async def set_online(tx: Tx, *, uid: str, now: datetime, ip: str | None, region: str | None) -> None:
    await tx.execute(_SET_ONLINE, {"device": uid, "now": now, "address": ip, "country": region})


async def set_offline(tx: Tx, *, uid: str, now: datetime) -> None:
    await tx.execute(_SET_OFFLINE, {"device": uid, "now": now})


async def mark_offline_except(tx: Tx, *, live: set[str], now: datetime) -> int:
    """Every device marked online but not in `live` goes offline."""
    online = (await tx.execute(sa.select(devices.c.uid).where(devices.c.online.is_(True)))).scalars()
    stale = sorted(set(online) - live)
    for start in range(0, len(stale), 500):
        chunk = stale[start : start + 500]
        await tx.execute(sa.update(devices).where(devices.c.uid.in_(chunk)).values(online=False, last_seen=now))
    return len(stale)


async def get_state(tx: Tx, *, uid: str) -> Any:
    return (await tx.execute(sa.select(state).where(state.c.uid == uid))).first()


async def put_state(tx: Tx, *, uid: str, **values: Any) -> None:
    updated = await tx.execute(sa.update(state).where(state.c.uid == uid).values(**values))
    if not updated.rowcount:
        await tx.execute(sa.insert(state).values(uid=uid, **values))


async def all_states(tx: Tx) -> list[Any]:
    return list(await tx.execute(sa.select(state)))


async def user_role(tx: Tx, *, user_id: str) -> str | None:
    users = tables.users
    row = (await tx.execute(sa.select(users.c.role, users.c.disabled).where(users.c.id == user_id))).first()
    return None if row is None or row.disabled else str(row.role)
