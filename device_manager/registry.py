"""The operators' view of every device: list with status, disable and enable (SPEC §5)."""

from __future__ import annotations

import dataclasses

from device_manager import store
from shared.context import Context
from shared.errors import NotFoundError
from shared.models import ActorType, EventType


async def list_devices(
    ctx: Context,
    *,
    query: str | None,
    online: bool | None,
    model: str | None,
    owner_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[store.FleetDevice], int]:
    """A page of the fleet and its total. `query` matches the start of a UID, a model or an owner's
    username, ignoring case."""
    query = (query or "").strip() or None
    async with ctx.db.read() as tx:
        return await store.list_all(
            tx, query=query, online=online, model=model, owner_id=owner_id, limit=limit, offset=offset
        )


async def set_disabled(ctx: Context, *, uid: str, disabled: bool, actor_id: str, ip: str | None) -> store.DeviceRow:
    """Disabled: its tokens are refused at once and its MQTT connection closed (SPEC §5)."""
    async with ctx.db.write() as tx:
        device = await store.device(tx, uid=uid.upper())
        if device is None:
            raise NotFoundError("No such device.")
        if device.disabled != disabled:
            await store.update_device(tx, uid=device.uid, disabled=disabled)
            ctx.revocations.set_device_disabled(tx, device.uid, disabled)
            await ctx.events.record(
                tx,
                EventType.DEVICE_DISABLED if disabled else EventType.DEVICE_ENABLED,
                actor_type=ActorType.USER,
                actor_id=actor_id,
                device_uid=device.uid,
                ip=ip,
            )
    return dataclasses.replace(device, disabled=disabled)
