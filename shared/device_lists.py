"""Each user's devices and role on each, kept per process: the list behind `GET /v1/devices` and the role
that every command, state read and desired-state write is checked against (issue 11: those reads ran a
database round trip on every request a phone makes).

Kept right the way revocations are (shared.revocation), within the same bound:
- a change of who may see a device (bind, pair, unbind, reset, share, unshare, transfer) announces the
  device ("access") and the users who hold a role on it now ("members"): processes forget every list
  that holds the device, and the lists of its new members, which cannot hold it yet;
- a change of what the list shows (a rename, presence) announces the device ("device_row");
- a change of who may see a device, or of its name, also stamps `devices.changed_at`, and each
  reconciliation pass (every second) tells this cache of the devices changed since the last pass and of
  their members, whatever the fan-out dropped. Lost fan-out or not, a role is at most about one
  reconciliation interval behind, never past the staleness bound: once reconciliation has not
  succeeded for `REVOCATION_MAX_STALENESS` seconds the cache answers nothing and every read goes to
  the database;
- presence changes by the thousand in a reconnect storm, too often to stamp (every pass would read
  them all back): a list is kept at most PRESENCE_TTL seconds, which bounds what a lost presence
  message can leave stale. Presence decides nothing; roles do, and they are reconciled.

A read that raced a change cannot put back what it read before the change: a put carries the tick from
before its read, and any forget of its user or of one of its devices since then makes it a no-op."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shared import tables
from shared.clock import utcnow
from shared.db import Database, Tx
from shared.errors import ForbiddenError, NotFoundError
from shared.models import DeviceRole
from shared.revocation import Revocations

# A user with more devices than this is paged from the database on every request: a list that large
# is an integrator's account, not a phone's, and caching it would let one user fill the memory.
MAX_DEVICES = 1000
MAX_USERS = 50_000
PRESENCE_TTL = 10.0  # s a list is served from memory at most (see above)

_devices, _shares = tables.devices, tables.device_shares
# The devices a user owns or has been shared, each with the user's role on it (`user_id` bound).
VISIBLE = sa.union_all(
    sa.select(_devices.c.uid, sa.literal("owner").label("role")).where(_devices.c.owner_id == sa.bindparam("user_id")),
    sa.select(_shares.c.uid, _shares.c.role).where(_shares.c.user_id == sa.bindparam("user_id")),
).subquery("visible")
# Built once: building a statement and its cache key costs more than running it (PERF §5).
_ALL_FOR_USER = (
    sa.select(
        _devices.c.uid, _devices.c.name, _devices.c.model, _devices.c.online, _devices.c.last_seen, VISIBLE.c.role
    )
    .join(VISIBLE, VISIBLE.c.uid == _devices.c.uid)
    .order_by(_devices.c.uid)
    .limit(MAX_DEVICES + 1)
)
_TOUCH = sa.update(_devices).where(_devices.c.uid == sa.bindparam("device")).values(changed_at=sa.bindparam("now"))
_MEMBERS = sa.union_all(
    sa.select(_devices.c.owner_id).where(_devices.c.uid == sa.bindparam("device"), _devices.c.owner_id.is_not(None)),
    sa.select(_shares.c.user_id).where(_shares.c.uid == sa.bindparam("device")),
)


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One line of a user's device list (SPEC §5 `GET /v1/devices`)."""

    uid: str
    name: str | None
    model: str
    role: DeviceRole
    online: bool
    last_seen: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "model": self.model,
            "role": self.role.value,
            "online": self.online,
            "last_seen": self.last_seen,
        }


@dataclass(frozen=True, slots=True)
class UserDevices:
    entries: tuple[DeviceEntry, ...]  # in UID order
    roles: Mapping[str, DeviceRole]
    loaded: float  # time.monotonic() when read from the database

    @classmethod
    def of(cls, entries: Iterable[DeviceEntry]) -> UserDevices:
        ordered = tuple(entries)
        return cls(ordered, {entry.uid: entry.role for entry in ordered}, time.monotonic())


class DeviceLists:
    def __init__(self, revocations: Revocations, db: Database, *, max_users: int = MAX_USERS) -> None:
        self.revocations = revocations
        self.db = db
        self.max_users = max_users
        self._lists: dict[str, UserDevices] = {}
        self._holders: dict[str, set[str]] = {}  # device uid -> users whose cached list holds it
        self._tick = 0  # one tick per forget
        self._user_ticks: dict[str, int] = {}  # user id -> the tick it was last forgotten at
        self._device_ticks: dict[str, int] = {}  # device uid -> the tick it was last forgotten at
        self._floor = 0  # puts of reads older than this are refused (the record of forgets was cleared)
        self._loading: dict[str, tuple[int, asyncio.Future[UserDevices | None]]] = {}
        revocations.watch("members", self.forget_users)
        revocations.watch("access", self.forget_devices)
        revocations.watch("device_row", self.forget_devices)

    # --- reads ----------------------------------------------------------------------------------

    async def of_user(self, user_id: str) -> UserDevices | None:
        """The user's devices, from memory when the view is confirmed; None for a user with more than
        MAX_DEVICES (the caller pages them from the database)."""
        found = self.cached(user_id)
        if found is not None:
            return found
        # Requests that miss together share one read, but only a read that began after the last
        # forget: one from before a change must not answer a request made after it.
        found_loading = self._loading.get(user_id)
        if found_loading is None or found_loading[0] != self._tick:
            loading: asyncio.Future[UserDevices | None] = asyncio.ensure_future(self._load(user_id))
            self._loading[user_id] = (self._tick, loading)
            loading.add_done_callback(lambda done: self._loaded(user_id, done))
        else:
            loading = found_loading[1]
        return await asyncio.shield(loading)

    def _loaded(self, user_id: str, done: asyncio.Future[UserDevices | None]) -> None:
        current = self._loading.get(user_id)
        if current is not None and current[1] is done:
            del self._loading[user_id]

    async def _load(self, user_id: str) -> UserDevices | None:
        tick = self._tick
        async with self.db.query() as tx:
            rows = list(await tx.execute(_ALL_FOR_USER, {"user_id": user_id}))
        if len(rows) > MAX_DEVICES:
            return None
        value = UserDevices.of(
            DeviceEntry(r.uid, r.name, r.model, DeviceRole(r.role), bool(r.online), r.last_seen) for r in rows
        )
        self._put(user_id, value, tick)
        return value

    def cached(self, user_id: str) -> UserDevices | None:
        found = self._lists.get(user_id)
        if found is None or not self.revocations.confirmed:
            return None
        if time.monotonic() - found.loaded > PRESENCE_TTL:
            return None
        return found

    def _put(self, user_id: str, value: UserDevices, tick: int) -> None:
        if tick < self._floor or self._user_ticks.get(user_id, -1) > tick:
            return  # the user's devices changed while they were read
        ticks = self._device_ticks
        if any(ticks.get(uid, -1) > tick for uid in value.roles):
            return  # one of them changed while it was read
        self._drop(user_id)
        if len(self._lists) >= self.max_users:
            self._drop(next(iter(self._lists)))  # the oldest entry makes room
        self._lists[user_id] = value
        for uid in value.roles:
            self._holders.setdefault(uid, set()).add(user_id)

    def _drop(self, user_id: str) -> None:
        value = self._lists.pop(user_id, None)
        if value is None:
            return
        for uid in value.roles:
            holders = self._holders.get(uid)
            if holders is not None:
                holders.discard(user_id)
                if not holders:
                    del self._holders[uid]

    # --- what changes reach ------------------------------------------------------------------

    def forget_users(self, user_ids: list[str]) -> None:
        self._tick += 1
        for user_id in user_ids:
            self._drop(user_id)
            self._user_ticks[user_id] = self._tick
        self._bound_record()

    def forget_devices(self, uids: list[str]) -> None:
        self._tick += 1
        for uid in uids:
            self._device_ticks[uid] = self._tick
            for user_id in list(self._holders.get(uid, ())):
                self._drop(user_id)
        self._bound_record()

    def _bound_record(self) -> None:
        if len(self._user_ticks) + len(self._device_ticks) > 4 * self.max_users:
            self._user_ticks.clear()
            self._device_ticks.clear()
            self._floor = self._tick + 1  # every read in flight now is refused: none can be stale

    def __len__(self) -> int:
        return len(self._lists)


# --- writers: called inside the transaction that makes the change ------------------------------


async def members_changed(tx: Tx, revocations: Revocations, uid: str) -> None:
    """Who may see `uid` changed: stamp it, and at commit tell every process of the device and of the
    users who hold a role on it now (the ones who lost theirs are found by the device)."""
    await tx.execute(_TOUCH, {"device": uid, "now": utcnow()})
    members = sorted({user_id for (user_id,) in await tx.execute(_MEMBERS, {"device": uid})})
    revocations.access_changed(tx, uid)
    if members:
        revocations.changed_soon(tx, "members", members)


async def listing_changed(tx: Tx, revocations: Revocations, uid: str) -> None:
    """What a device's line shows changed (its name): stamp it and tell every process at commit."""
    await tx.execute(_TOUCH, {"device": uid, "now": utcnow()})
    revocations.changed_soon(tx, "device_row", [uid])


def require_role(role: DeviceRole | None, at_least: DeviceRole) -> DeviceRole:
    """The caller's role on a device, if it is enough for `at_least` (SPEC §5): no role is 404 (the
    device is not even visible to them), too small a role 403."""
    if role is None:
        raise NotFoundError("No such device.")
    if not role.allows(at_least):
        raise ForbiddenError(f"This needs the {at_least.value} role on the device.")
    return role
