"""Provisioning and device credentials: a manufacturer creates devices (secret and claim code shown
once), a device trades its UID and secret for a device token (SPEC §5)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from device_manager import credentials, store
from shared import lockout
from shared.clock import utcnow
from shared.context import Context
from shared.errors import (
    DeviceDisabledError,
    InvalidCredentialsError,
    UidTakenError,
    ValidationFailedError,
)
from shared.models import ActorType, EventType

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Provisioned:
    uid: str
    secret: str
    claim_code: str


@dataclass(frozen=True, slots=True)
class DeviceToken:
    access_token: str
    expires_in: int


def _uids(count: int, uids: list[str] | None) -> list[str] | None:
    """The UIDs asked for, checked and normalized; None when `count` new ones are to be drawn."""
    if uids is None:
        if not 1 <= count <= MAX_BATCH:
            raise ValidationFailedError(f"count: 1 to {MAX_BATCH} devices a call.")
        return None
    if not 1 <= len(uids) <= MAX_BATCH:
        raise ValidationFailedError(f"uids: 1 to {MAX_BATCH} devices a call.")
    normalized = [credentials.normalize_uid(uid) for uid in uids]
    bad = [uid for uid, good in zip(uids, normalized, strict=True) if good is None]
    if bad:
        raise ValidationFailedError(f"uids: {bad[0]!r} is not 20 characters of A-Z and 0-9.")
    clean = [uid for uid in normalized if uid is not None]
    if len(set(clean)) != len(clean):
        raise ValidationFailedError("uids: a UID appears twice.")
    return clean


def _new_credentials(uids: list[str] | None, count: int) -> list[Provisioned]:
    # 28 draws from the OS's generator per device, a system call each: ~0.1 ms a device, so a batch of
    # 1,000 is drawn in the pool, not on the event loop.
    chosen = uids if uids is not None else [credentials.new_uid() for _ in range(count)]
    return [Provisioned(uid, credentials.new_secret(), credentials.new_claim_code()) for uid in chosen]


def _hash_batch(batch: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(credentials.hash_secret(secret), credentials.hash_claim_code(uid, code)) for uid, secret, code in batch]


async def provision(
    ctx: Context,
    *,
    model: str,
    count: int = 1,
    uids: list[str] | None = None,
    name: str | None = None,
    actor_id: str | None,
    ip: str | None,
) -> list[Provisioned]:
    made = await ctx.hashing.run(_new_credentials, _uids(count, uids), count)
    # The claim-code hash is deliberately slow: run the batch in the hashing pool, off the event loop.
    chosen = [p.uid for p in made]
    items = [(p.uid, p.secret, p.claim_code) for p in made]
    size = max(1, -(-len(items) // ctx.hashing.workers))  # one slice per hashing thread
    slices = await asyncio.gather(
        *(ctx.hashing.run(_hash_batch, items[i : i + size]) for i in range(0, len(items), size))
    )
    hashes = [pair for part in slices for pair in part]
    now = utcnow()
    rows = [
        {
            "uid": p.uid,
            "model": model,
            "name": name,
            "secret_hash": secret_hash,
            "claim_code_hash": code_hash,
            "owner_id": None,
            "disabled": False,
            "online": False,
            "created_at": now,
        }
        for p, (secret_hash, code_hash) in zip(made, hashes, strict=True)
    ]
    async with ctx.db.write() as tx:
        taken = await store.existing_uids(tx, uids=chosen)
        if taken:
            raise UidTakenError(f"A device with the UID {taken[0]} exists already.")
        await store.insert_devices(tx, rows=rows)
        actor_type = ActorType.USER if actor_id else ActorType.SYSTEM
        await ctx.events.record_many(
            tx,
            EventType.DEVICE_PROVISIONED,
            actor_type=actor_type,
            actor_id=actor_id,
            ip=ip,
            items=[(p.uid, {"model": model}) for p in made],
        )
    return made


async def issue_token(ctx: Context, *, uid: str, secret: str, ip: str | None) -> DeviceToken:
    """A device proves itself with its secret and gets a device token (SPEC §3, §5)."""
    row = await authenticate_device(ctx, uid=uid, secret=secret, ip=ip)
    ttl = ctx.settings.device_token_ttl
    token, _ = ctx.issuer.device(uid=row.uid, ttl=ttl)
    async with ctx.db.write() as tx:
        await ctx.events.record(
            tx, EventType.DEVICE_TOKEN_ISSUED, actor_type=ActorType.DEVICE, actor_id=row.uid, device_uid=row.uid, ip=ip
        )
    return DeviceToken(token, ttl)


async def authenticate_device(ctx: Context, *, uid: str, secret: str, ip: str | None) -> store.DeviceRow:
    """The device itself, by its secret (reset and pairing), throttled like a login."""
    normalized = credentials.normalize_uid(uid) or uid.upper()[:20]
    await lockout.check(ctx, normalized, ip, scope="device-token")
    async with ctx.db.read() as tx:
        row = await store.device(tx, uid=normalized)
    if row is None or not credentials.secret_matches(secret, row.secret_hash):
        await lockout.record_failure(ctx, normalized, ip, scope="device-token")
        raise InvalidCredentialsError("The UID or secret is wrong.")
    if row.disabled:
        raise DeviceDisabledError()
    return row
