"""Binding a device to its owner: by the claim code on its label, or by a pairing token the app hands
to the device; unbinding by the owner, or by the device itself on a factory reset (SPEC §5).

A wrong code and an unknown UID answer alike and are throttled per user and per IP; when several
users bind one device at once exactly one wins (a conditional UPDATE decides)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from device_manager import credentials, store
from device_manager.access import record, require
from device_manager.provisioning import authenticate_device
from shared import device_lists, lockout
from shared.clock import utcnow
from shared.context import Context
from shared.errors import (
    AlreadyBoundError,
    DeviceDisabledError,
    InvalidClaimCodeError,
    InvalidPairingTokenError,
)
from shared.models import DeviceRole, EventType

PAIRING_TTL = 600
# Verified against when the UID is unknown, so an unknown UID costs as much as a wrong code.
_DUMMY_CLAIM_HASH = credentials.hash_claim_code("0" * 20, "AAAAAAAA")


@dataclass(frozen=True, slots=True)
class Binding:
    """A device bound to its owner (who holds, so, the owner's role)."""

    uid: str
    owner_id: str
    role: DeviceRole = DeviceRole.OWNER


@dataclass(frozen=True, slots=True)
class PairingToken:
    token: str  # shown once, stored hashed
    expires_in: int


async def bind(ctx: Context, *, uid: str, claim_code: str, user_id: str, ip: str | None) -> Binding:
    normalized = credentials.normalize_uid(uid) or ""
    failures = await lockout.check(ctx, user_id, ip, scope="bind")
    async with ctx.db.read() as tx:
        device = await store.device(tx, uid=normalized) if normalized else None
    stored = device.claim_code_hash if device is not None else _DUMMY_CLAIM_HASH
    matches = await ctx.hashing.run(credentials.claim_code_matches, normalized, claim_code, stored)
    if device is None or not matches:
        await lockout.record_failure(ctx, user_id, ip, scope="bind")
        raise InvalidClaimCodeError()
    if device.disabled:
        raise DeviceDisabledError()
    async with ctx.db.write() as tx:
        if not await store.claim(tx, uid=device.uid, user_id=user_id, now=utcnow()):
            current = await store.device(tx, uid=device.uid)
            if current is None or current.owner_id != user_id:
                raise AlreadyBoundError()
            return Binding(device.uid, user_id)  # bound to the caller already
        await record(ctx, tx, EventType.DEVICE_BOUND, uid=device.uid, actor_id=user_id, ip=ip, method="claim_code")
        await device_lists.members_changed(tx, ctx.revocations, device.uid)
    await lockout.record_success(ctx, user_id, ip, failures=failures, scope="bind")
    return Binding(device.uid, user_id)


async def new_pairing_token(ctx: Context, *, user_id: str, ip: str | None) -> PairingToken:
    token = credentials.new_pairing_token()
    now = utcnow()
    async with ctx.db.write() as tx:
        await store.insert_pairing_token(
            tx,
            token_hash=credentials.hash_token(token),
            user_id=user_id,
            now=now,
            expires_at=now + timedelta(seconds=PAIRING_TTL),
        )
    return PairingToken(token, PAIRING_TTL)


async def pair(ctx: Context, *, uid: str, secret: str, pairing_token: str, ip: str | None) -> Binding:
    device = await authenticate_device(ctx, uid=uid, secret=secret, ip=ip)
    # Wrong pairing tokens are guesses: counted per device and address like wrong logins (SPEC §4).
    failures = await lockout.check(ctx, device.uid, ip, scope="pair")
    try:
        result = await _redeem(ctx, device=device, pairing_token=pairing_token, ip=ip)
    except InvalidPairingTokenError:
        await lockout.record_failure(ctx, device.uid, ip, scope="pair")
        raise
    await lockout.record_success(ctx, device.uid, ip, failures=failures, scope="pair")
    return result


async def _redeem(ctx: Context, *, device: store.DeviceRow, pairing_token: str, ip: str | None) -> Binding:
    async with ctx.db.write() as tx:
        user_id = await store.redeem_pairing_token(
            tx, token_hash=credentials.hash_token(pairing_token), uid=device.uid, now=utcnow()
        )
        if user_id is None:
            raise InvalidPairingTokenError()
        if not await store.claim(tx, uid=device.uid, user_id=user_id, now=utcnow()):
            current = await store.device(tx, uid=device.uid)
            if current is None or current.owner_id != user_id:
                raise AlreadyBoundError()
        await record(
            ctx,
            tx,
            EventType.DEVICE_BOUND,
            uid=device.uid,
            actor_id=device.uid,
            ip=ip,
            method="pairing",
            user_id=user_id,
        )
        await device_lists.members_changed(tx, ctx.revocations, device.uid)
    return Binding(device.uid, user_id)


async def unbind(ctx: Context, *, uid: str, user_id: str, ip: str | None) -> None:
    async with ctx.db.write() as tx:
        device, _ = await require(tx, uid=uid, user_id=user_id, at_least=DeviceRole.OWNER)
        lost = await store.release(tx, uid=device.uid)
        await record(ctx, tx, EventType.DEVICE_UNBOUND, uid=device.uid, actor_id=user_id, ip=ip, users=lost)
        await device_lists.members_changed(tx, ctx.revocations, device.uid)


async def reset(ctx: Context, *, uid: str, secret: str, ip: str | None) -> None:
    """Factory reset: the device releases itself, so a resold device needs nothing from its former owner."""
    device = await authenticate_device(ctx, uid=uid, secret=secret, ip=ip)
    async with ctx.db.write() as tx:
        lost = await store.release(tx, uid=device.uid)
        await record(
            ctx, tx, EventType.DEVICE_UNBOUND, uid=device.uid, actor_id=device.uid, ip=ip, reason="reset", users=lost
        )
        await device_lists.members_changed(tx, ctx.revocations, device.uid)
