"""Who may do what to a device (no role is 404: the device is not even visible; too small a role 403),
and what they did, on its timeline."""

from __future__ import annotations

from typing import Any

from device_manager import store
from shared.context import Context
from shared.db import Tx
from shared.device_lists import require_role
from shared.errors import NotFoundError
from shared.models import ActorType, DeviceRole, EventType


async def role_of(tx: Tx, *, device: store.DeviceRow, user_id: str) -> DeviceRole | None:
    if device.owner_id == user_id:
        return DeviceRole.OWNER
    role = await store.share_role(tx, uid=device.uid, user_id=user_id)
    return DeviceRole(role) if role else None


async def require(tx: Tx, *, uid: str, user_id: str, at_least: DeviceRole) -> tuple[store.DeviceRow, DeviceRole]:
    device = await store.device(tx, uid=uid.upper(), lock=tx.write)
    if device is None:
        raise NotFoundError("No such device.")
    return device, require_role(await role_of(tx, device=device, user_id=user_id), at_least)


async def record(
    ctx: Context, tx: Tx, type: EventType, *, uid: str, actor_id: str, ip: str | None, **detail: Any
) -> None:
    """An event on the device's timeline, by its user (or by the device itself, pairing)."""
    actor_type = ActorType.DEVICE if actor_id == uid else ActorType.USER
    await ctx.events.record(tx, type, actor_type=actor_type, actor_id=actor_id, device_uid=uid, ip=ip, detail=detail)
