"""What owners and sharees do with a bound device: see it, rename it, share, unshare, transfer."""

from __future__ import annotations

from typing import Any

from device_manager import store
from device_manager.access import record, require
from shared import device_lists
from shared.clock import utcnow
from shared.context import Context
from shared.db import Tx
from shared.errors import CannotShareWithOwnerError, ForbiddenError, NotFoundError
from shared.models import DeviceRole, EventType


def device_view(row: Any, role: str) -> dict[str, Any]:
    return {
        "uid": row.uid,
        "name": row.name,
        "model": row.model,
        "role": role,
        "owner_id": row.owner_id,
        "online": bool(row.online),
        "last_seen": row.last_seen,
        "connected_at": row.connected_at,
        "ip": row.ip,
        "region": row.region,
    }


async def list_devices(ctx: Context, *, user_id: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    mine = await ctx.device_lists.of_user(user_id)
    if mine is not None:  # from memory, kept right by the fan-out and reconciliation
        return [entry.as_json() for entry in mine.entries[offset : offset + limit]], len(mine.entries)
    # More devices than a process keeps per user: one page from the database, outside a transaction
    # (one statement, one snapshot, except for a page past the end, whose second statement only counts).
    async with ctx.db.query() as tx:
        rows, total = await store.list_for_user(tx, user_id=user_id, limit=limit, offset=offset)
    return [
        {
            "uid": r.uid,
            "name": r.name,
            "model": r.model,
            "role": r.role,
            "online": bool(r.online),
            "last_seen": r.last_seen,
        }
        for r in rows
    ], total


async def get_device(ctx: Context, *, uid: str, user_id: str) -> dict[str, Any]:
    async with ctx.db.read() as tx:
        device, role = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.VIEWER)
    return device_view(device, role.value)


async def rename(ctx: Context, *, uid: str, user_id: str, name: str, ip: str | None) -> dict[str, Any]:
    async with ctx.db.write() as tx:
        device, role = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.OWNER)
        await store.update_device(tx, uid=device.uid, name=name)
        await device_lists.listing_changed(tx, ctx.revocations, device.uid)
        device = await store.device(tx, uid=device.uid)  # type: ignore[assignment]
    return device_view(device, role.value)


async def _target_user(tx: Tx, username: str) -> Any:
    target = await store.user_by_username(tx, username=username)
    if target is None:
        raise NotFoundError("No such user.")
    return target


async def share(
    ctx: Context, *, uid: str, user_id: str, username: str, role: DeviceRole, ip: str | None
) -> dict[str, Any]:
    async with ctx.db.write() as tx:
        device, _ = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.OWNER)
        target = await _target_user(tx, username)
        if target.id == device.owner_id:
            raise CannotShareWithOwnerError()
        now = utcnow()
        await store.put_share(tx, uid=device.uid, user_id=target.id, role=role.value, now=now)
        await record(
            ctx,
            tx,
            EventType.DEVICE_SHARED,
            uid=device.uid,
            actor_id=user_id,
            ip=ip,
            user_id=target.id,
            role=role.value,
        )
        await device_lists.members_changed(tx, ctx.revocations, device.uid)
    return {"uid": device.uid, "user_id": target.id, "username": target.username, "role": role.value, "created_at": now}


async def list_shares(ctx: Context, *, uid: str, user_id: str) -> list[dict[str, Any]]:
    async with ctx.db.read() as tx:
        device, _ = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.OWNER)
        rows = await store.list_shares(tx, uid=device.uid)
    return [{"user_id": r.user_id, "username": r.username, "role": r.role, "created_at": r.created_at} for r in rows]


async def unshare(ctx: Context, *, uid: str, user_id: str, sharee_id: str, ip: str | None) -> None:
    """By the owner, or by the sharee leaving; anyone else sees nothing (404)."""
    async with ctx.db.write() as tx:
        device, role = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.VIEWER)
        if role is not DeviceRole.OWNER and sharee_id != user_id:
            # The caller sees the device, so this is 403, not 404 (SPEC §2).
            raise ForbiddenError("Only the owner may remove someone else's share.")
        if not await store.delete_share(tx, uid=device.uid, user_id=sharee_id):
            raise NotFoundError("No such share.")
        await record(ctx, tx, EventType.DEVICE_UNSHARED, uid=device.uid, actor_id=user_id, ip=ip, user_id=sharee_id)
        await device_lists.members_changed(tx, ctx.revocations, device.uid)


async def transfer(ctx: Context, *, uid: str, user_id: str, username: str, ip: str | None) -> dict[str, Any]:
    """The named user becomes owner; the old owner loses all access. Other shares stay."""
    async with ctx.db.write() as tx:
        device, _ = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.OWNER)
        target = await _target_user(tx, username)
        if target.id == user_id:
            raise CannotShareWithOwnerError("The device is yours already.")
        await store.delete_share(tx, uid=device.uid, user_id=target.id)
        await store.set_owner(tx, uid=device.uid, user_id=target.id, now=utcnow())
        await record(
            ctx,
            tx,
            EventType.DEVICE_TRANSFERRED,
            uid=device.uid,
            actor_id=user_id,
            ip=ip,
            from_user=user_id,
            to_user=target.id,
        )
        await device_lists.members_changed(tx, ctx.revocations, device.uid)
    return {"uid": device.uid, "owner_id": target.id, "owner_username": target.username}
