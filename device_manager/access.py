"""Who may do what to a device: no role is 404 (the device is not even visible), too small a role 403."""

from __future__ import annotations

from device_manager import store
from shared.db import Tx
from shared.device_lists import require_role
from shared.errors import NotFoundError
from shared.models import DeviceRole


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
