"""Users: registration, the caller's own account, and what admins do to users (SPEC §4)."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from account_manager import store
from account_manager.passwords import check_strength, passwords
from account_manager.sessions import end_all_sessions
from account_manager.user_cache import user_cache
from shared import lockout
from shared.clock import utcnow
from shared.context import Context
from shared.errors import (
    NotFoundError,
    RegistrationClosedError,
    UsernameTakenError,
    ValidationFailedError,
    WrongPasswordError,
)
from shared.models import ActorType, EventType, Role

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{2,63}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
# User ids: lower-case letters and digits, one length, no "-" (the MQTT client-id rule needs it).
_ID_ALPHABET = string.ascii_lowercase + string.digits
USER_ID_LENGTH = 20


def new_user_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(USER_ID_LENGTH))


def check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise ValidationFailedError("username: 3 to 64 letters, digits or . _ @ + -, starting with a letter or digit.")


def check_email(email: str | None) -> None:
    if email is not None and (len(email) > 254 or not EMAIL.fullmatch(email)):
        raise ValidationFailedError("email: not an email address.")


async def create_user(
    ctx: Context,
    *,
    username: str,
    password: str,
    role: Role,
    email: str | None = None,
    actor_id: str | None = None,
    ip: str | None = None,
    registration: bool = False,
) -> store.UserRow:
    """A new user: `registration`, one who signed up (`user_registered`, by themselves); otherwise one
    made by an admin (`actor_id`) or by the platform's operator on the command line or at first start
    (`user_created`, by the system)."""
    check_username(username)
    check_email(email)
    check_strength(password)
    password_hash = await passwords(ctx).hash(password)
    user_id = new_user_id()
    now = utcnow()
    async with ctx.db.write() as tx:
        if await store.user_by_username(tx, username=username) is not None:
            raise UsernameTakenError()
        # Two registrations of one name at once both pass the look-up: the store's insert lets one win.
        await store.insert_user(
            tx, user_id=user_id, username=username, password_hash=password_hash, role=role, email=email, now=now
        )
        detail = {"username": username, "role": str(role), "user_id": user_id}
        if registration:
            await ctx.events.record(
                tx, EventType.USER_REGISTERED, actor_type=ActorType.USER, actor_id=user_id, ip=ip, detail=detail
            )
        else:
            await ctx.events.record(
                tx,
                EventType.USER_CREATED,
                actor_type=ActorType.USER if actor_id else ActorType.SYSTEM,
                actor_id=actor_id,
                ip=ip,
                detail=detail,
            )
    return store.UserRow(user_id, username, email, password_hash, role, False, now, None, now)


async def register(ctx: Context, *, username: str, password: str, email: str | None, ip: str | None) -> store.UserRow:
    if not ctx.settings.open_registration:
        raise RegistrationClosedError()
    return await create_user(
        ctx, username=username, password=password, role=Role.USER, email=email, ip=ip, registration=True
    )


async def get_user(ctx: Context, *, user_id: str, cached: bool = False) -> store.UserRow:
    """The user's row; with `cached`, from this process's cache where it has it (for reads that only
    show the row: nothing that decides access reads it from the cache)."""
    cache = user_cache(ctx) if cached else None
    if cache is not None and (hit := cache.get(user_id)) is not None:
        return hit
    ticket = cache.ticket() if cache is not None else 0
    async with ctx.db.query() as tx:
        user = await store.user_by_id(tx, user_id=user_id)
    if user is None:
        raise NotFoundError("No such user.")
    if cache is not None:
        cache.put(user_id, user, ticket)
    return user


async def update_email(ctx: Context, *, user_id: str, email: str | None, ip: str | None) -> store.UserRow:
    check_email(email)
    async with ctx.db.write() as tx:
        await store.update_user(tx, user_id=user_id, now=utcnow(), email=email)
        ctx.revocations.user_changed(tx, user_id)
        await ctx.events.record(
            tx, EventType.USER_UPDATED, actor_type=ActorType.USER, actor_id=user_id, ip=ip, detail={"fields": ["email"]}
        )
    return await get_user(ctx, user_id=user_id)


async def change_password(
    ctx: Context, *, user_id: str, sid: str, current_password: str, new_password: str, ip: str | None
) -> None:
    user = await get_user(ctx, user_id=user_id)
    # A wrong current password is a guess like a wrong login, counted in the same place: a stolen
    # access token buys no more guesses at the password than the login form gives (SPEC §4).
    key = user.username.lower()
    failures = await lockout.check(ctx, key, ip)
    if not await passwords(ctx).verify(user.password_hash, current_password):
        await lockout.record_failure(ctx, key, ip)
        raise WrongPasswordError()
    await lockout.record_success(ctx, key, ip, failures=failures)
    check_strength(new_password)
    password_hash = await passwords(ctx).hash(new_password)
    async with ctx.db.write() as tx:
        await store.update_user(tx, user_id=user_id, now=utcnow(), password_hash=password_hash)
        ctx.revocations.user_changed(tx, user_id)
        ended = await end_all_sessions(ctx, tx, user_id=user_id, reason="password_changed", except_sid=sid)
        await ctx.events.record(
            tx,
            EventType.PASSWORD_CHANGED,
            actor_type=ActorType.USER,
            actor_id=user_id,
            ip=ip,
            detail={"sessions_ended": len(ended)},
        )


async def admin_update_user(
    ctx: Context, *, actor_id: str, user_id: str, role: Role | None, disabled: bool | None, ip: str | None
) -> store.UserListing:
    async with ctx.db.write() as tx:
        user = await store.user_by_id(tx, user_id=user_id)
        if user is None:
            raise NotFoundError("No such user.")
        changes: dict[str, Any] = {}
        if role is not None and role != user.role:
            changes["role"] = str(role)
        if disabled is not None and disabled != user.disabled:
            changes["disabled"] = disabled
        if changes:
            await store.update_user(tx, user_id=user_id, now=utcnow(), **changes)
            ctx.revocations.user_changed(tx, user_id)
            # Disabling ends every session at once; so does a role change, so that no token goes on
            # carrying the old role until it expires.
            if changes.get("disabled") or "role" in changes:
                await end_all_sessions(ctx, tx, user_id=user_id, reason="disabled" if disabled else "role_changed")
            await ctx.events.record(
                tx,
                EventType.USER_UPDATED,
                actor_type=ActorType.USER,
                actor_id=actor_id,
                ip=ip,
                detail={"user_id": user_id, **changes},
            )
        rows, _ = await store.list_users(tx, query=None, role=None, limit=1, offset=0, now=utcnow(), user_id=user_id)
    return rows[0]


def new_user_listing(user: store.UserRow) -> store.UserListing:
    """A user just created, as the admins' list shows it: enabled, no session yet."""
    return store.UserListing(
        id=user.id,
        username=user.username,
        email=user.email,
        role=user.role,
        disabled=user.disabled,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
        mfa_enabled=user.mfa_enabled,
        active_sessions=0,
    )


async def list_users(
    ctx: Context, *, query: str | None, role: str | None, limit: int, offset: int
) -> tuple[list[store.UserListing], int]:
    """A page of users, newest first, and the total. `query` matches the start of a username or an email,
    ignoring case, or a whole user id."""
    query = (query or "").strip() or None
    async with ctx.db.read() as tx:
        return await store.list_users(tx, query=query, role=role, limit=limit, offset=offset, now=utcnow())


async def ensure_admin(ctx: Context, *, password: str | None) -> str | None:
    """First serve on an empty database: create `admin`. The password it was given, or a generated
    one (returned so the command line prints it once); None when users already exist."""
    async with ctx.db.read() as tx:
        if await store.count_users(tx) > 0:
            return None
    chosen = password or secrets.token_urlsafe(15)
    await create_user(ctx, username="admin", password=chosen, role=Role.ADMIN)
    return chosen


@dataclass(frozen=True, slots=True)
class Stats:
    """The platform at a glance (SPEC §4 `GET /v1/admin/stats`): counts now and over the last 24 h."""

    users: int
    devices: int
    devices_online: int
    sessions_active: int
    logins_24h: int
    login_failures_24h: int
    device_connections_24h: int


@dataclass(frozen=True, slots=True)
class HourCounts:
    hour: datetime  # the start of a UTC hour
    logins: int
    login_failures: int
    device_connections: int


async def stats(ctx: Context) -> Stats:
    now = utcnow()
    day_ago: datetime = now - timedelta(hours=24)
    async with ctx.db.read() as tx:
        devices, online = await store.count_devices(tx)
        return Stats(
            users=await store.count_users(tx),
            devices=devices,
            devices_online=online,
            sessions_active=await store.count_active_sessions(tx, now=now),
            logins_24h=await store.count_events_since(tx, type=EventType.LOGIN_SUCCEEDED, since=day_ago),
            login_failures_24h=await store.count_events_since(tx, type=EventType.LOGIN_FAILED, since=day_ago),
            device_connections_24h=await store.count_events_since(tx, type=EventType.DEVICE_CONNECTED, since=day_ago),
        )


# The series of the dashboard's chart (SPEC §8), by the event type each counts.
HOURLY_SERIES = {
    EventType.LOGIN_SUCCEEDED: "logins",
    EventType.LOGIN_FAILED: "login_failures",
    EventType.DEVICE_CONNECTED: "device_connections",
}


async def hourly_stats(ctx: Context, *, hours: int) -> list[HourCounts]:
    """Logins, failures and device connections per UTC hour, oldest first: the current (partial) hour
    and the `hours - 1` before it, hours without events included as zeros so a chart needs no gaps."""
    current = utcnow().replace(minute=0, second=0, microsecond=0)
    first = current - timedelta(hours=hours - 1)
    buckets = {first + timedelta(hours=i): dict.fromkeys(HOURLY_SERIES.values(), 0) for i in range(hours)}
    async with ctx.db.read() as tx:
        counts = await store.count_events_by_hour(tx, types=[str(t) for t in HOURLY_SERIES], since=first)
    for type_, hour, count in counts:
        if hour in buckets:
            buckets[hour][HOURLY_SERIES[EventType(type_)]] = count
    return [HourCounts(hour=hour, **series) for hour, series in buckets.items()]
