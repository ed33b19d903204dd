"""What owners and sharees do with a bound device: see it, rename it, share, unshare, transfer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from device_manager import store
from device_manager.access import record, require
from shared import device_lists
from shared.clock import utcnow
from shared.context import Context
from shared.db import Tx
from shared.device_lists import DeviceEntry
from shared.errors import CannotShareWithOwnerError, ForbiddenError, NotFoundError
from shared.models import DeviceRole, EventType


@dataclass(frozen=True, slots=True)
class SeenDevice:
    """A device and the role its viewer holds on it."""

    device: store.DeviceRow
    role: DeviceRole


@dataclass(frozen=True, slots=True)
class Share:
    uid: str
    user_id: str
    username: str
    role: DeviceRole
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Transfer:
    uid: str
    owner_id: str
    owner_username: str


async def list_devices(ctx: Context, *, user_id: str, limit: int, offset: int) -> tuple[list[DeviceEntry], int]:
    mine = await ctx.device_lists.of_user(user_id)
    if mine is not None:  # from memory, kept right by the fan-out and reconciliation
        return list(mine.entries[offset : offset + limit]), len(mine.entries)
    # More devices than a process keeps per user: one page from the database, outside a transaction
    # (one statement, one snapshot, except for a page past the end, whose second statement only counts).
    async with ctx.db.query() as tx:
        return await store.list_for_user(tx, user_id=user_id, limit=limit, offset=offset)


async def get_device(ctx: Context, *, uid: str, user_id: str) -> SeenDevice:
    async with ctx.db.read() as tx:
        device, role = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.VIEWER)
    return SeenDevice(device, role)


async def rename(ctx: Context, *, uid: str, user_id: str, name: str, ip: str | None) -> SeenDevice:
    async with ctx.db.write() as tx:
        device, role = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.OWNER)
        await store.update_device(tx, uid=device.uid, name=name)
        await device_lists.listing_changed(tx, ctx.revocations, device.uid)
        renamed = await store.device(tx, uid=device.uid)
    return SeenDevice(renamed or device, role)


async def _target_user(tx: Tx, username: str) -> store.UserRef:
    target = await store.user_by_username(tx, username=username)
    if target is None:
        raise NotFoundError("No such user.")
    return target


async def share(ctx: Context, *, uid: str, user_id: str, username: str, role: DeviceRole, ip: str | None) -> Share:
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
    return Share(device.uid, target.id, target.username, role, now)


async def list_shares(ctx: Context, *, uid: str, user_id: str) -> list[store.ShareRow]:
    async with ctx.db.read() as tx:
        device, _ = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.OWNER)
        return await store.list_shares(tx, uid=device.uid)


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


async def transfer(ctx: Context, *, uid: str, user_id: str, username: str, ip: str | None) -> Transfer:
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
    return Transfer(device.uid, target.id, target.username)
