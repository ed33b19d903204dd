"""Device codes (RFC 8628): a hub asks for a pair of codes, shows the short one to its user, and polls
with the long one while the user approves at /device, signed in on the hosted page. User codes are 8
letters of RFC 8628 §6.1's consonant alphabet (no vowels, no look-alikes), typed with or without the
dash, in either case; wrong ones count toward a lockout per user and address like a password's."""

from __future__ import annotations

import math
import re
import secrets
import time
from datetime import datetime, timedelta

from account_manager import oauth_store
from account_manager.oauth_store import DeviceCodeRow, HostedLogin, UserCodeTakenError
from account_manager.sessions import TokenPair, issue_session, new_session_id
from shared import lockout
from shared.clock import sha256_hex, utcnow
from shared.context import Context
from shared.errors import RateLimitedError
from shared.models import ActorType, EventType

DEVICE_CODE_TTL = 600
INTERVAL = 5
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5: each slow_down adds 5 s to the interval
EARLY_TOLERANCE = 1  # s: a poll this much early is network jitter, not a client polling too fast
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
_USER_CODE = re.compile(f"[{USER_CODE_ALPHABET}]{{8}}")
LOCKOUT_SCOPE = "user_code"
REQUESTS_PER_MINUTE = 30  # device authorization requests from one address (each stores a row)


class UserCodeNotFoundError(LookupError):
    """No pending, unexpired device code has this user code."""


def new_user_code() -> str:
    letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    return f"{letters[:4]}-{letters[4:]}"


def normalize_user_code(typed: str) -> str | None:
    """What a person typed, as stored: upper-case, without dashes and spaces; None if it cannot be one."""
    code = re.sub(r"[\s-]", "", typed[:64]).upper()
    return code if _USER_CODE.fullmatch(code) else None


async def rate_limit_requests(ctx: Context, ip: str | None) -> None:
    """At most REQUESTS_PER_MINUTE in any 60 s, estimated from two counts a minute each: this minute's,
    and the share of the last minute's that falls in the past 60 s. A count per calendar minute alone let
    twice the limit through around the turn of a minute. A refused request counts too: a client that
    keeps asking stays refused, and its Retry-After says when one more would be let through."""
    minute, into = divmod(time.time(), 60)
    key = f"device_authorization:{ip}:"
    this_minute = await ctx.counters.hit(f"{key}{int(minute)}", 120)
    if this_minute > REQUESTS_PER_MINUTE:
        raise RateLimitedError(seconds_until_allowed(this_minute, 0, into))
    last_minute = await ctx.counters.count(f"{key}{int(minute) - 1}")
    if this_minute * 60 + last_minute * (60 - into) > REQUESTS_PER_MINUTE * 60:  # × 60: no rounding at the edges
        raise RateLimitedError(seconds_until_allowed(this_minute, last_minute, into))


def seconds_until_allowed(this_minute: int, last_minute: int, into: float) -> int:
    """How long until one more request from the address is let through, if it sends nothing before.
    That request counts itself: later in this minute the estimate is this_minute + 1 plus the falling
    share of last_minute; in the next minute it is 1 plus the falling share of this_minute."""
    room = REQUESTS_PER_MINUTE - 1
    if this_minute <= room:  # perhaps later in this minute, once enough of the last one has slid out
        at = 60 * (last_minute - room + this_minute) / last_minute if last_minute else 0.0
        if at < 60:
            return max(1, math.ceil(at - into))
    at_next = 60 * (this_minute - room) / this_minute if this_minute > room else 0.0
    return max(1, math.ceil(60 - into + at_next))


async def save_device_code(ctx: Context, *, client_id: str, device_code: str, user_code: str) -> str:
    """Store a new pair; the user code as stored (another one on the rare clash with a live code)."""
    for _ in range(5):
        now = utcnow()
        try:
            async with ctx.db.write() as tx:
                await oauth_store.insert_device_code(
                    tx,
                    device_code_hash=sha256_hex(device_code),
                    user_code_hash=sha256_hex(normalize_user_code(user_code) or ""),
                    client_id=client_id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=DEVICE_CODE_TTL),
                    poll_interval=INTERVAL,
                )
            return user_code
        except UserCodeTakenError:
            user_code = new_user_code()
    raise RuntimeError("no free user code after 5 tries")


async def find_device_code(ctx: Context, device_code: str) -> DeviceCodeRow | None:
    if not device_code or len(device_code) > 256:
        return None
    async with ctx.db.query() as tx:
        return await oauth_store.device_code_by_hash(tx, device_code_hash=sha256_hex(device_code))


async def record_poll(ctx: Context, row: DeviceCodeRow) -> bool:
    """Note a poll of a pending code; True when it came before the interval was up (slow_down: the
    interval grows by 5 s for this and every later poll, RFC 8628 §3.5)."""
    now = utcnow()
    early = row.last_polled_at is not None and _seconds(now - row.last_polled_at) < row.interval - EARLY_TOLERANCE
    interval = row.interval + SLOW_DOWN_STEP if early else row.interval
    async with ctx.db.write() as tx:
        await oauth_store.record_poll(tx, device_code_hash=row.device_code_hash, now=now, interval=interval)
    return early


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


async def redeem_device_code(
    ctx: Context, *, row: DeviceCodeRow, ip: str | None, user_agent: str | None
) -> TokenPair | None:
    """The approving user's new session for the hub, in the transaction that marks the code
    redeemed; None if another poll redeemed it first or the user can no longer log in."""
    if row.user_id is None or row.user_role is None or row.user_disabled:
        return None
    sid = new_session_id()
    async with ctx.db.write() as tx:
        if not await oauth_store.redeem_device_code(tx, device_code_hash=row.device_code_hash, sid=sid):
            return None
        pair = await issue_session(
            ctx,
            tx,
            user_id=row.user_id,
            role=row.user_role,
            ip=ip,
            user_agent=user_agent,
            client_id=row.client_id,
            sid=sid,
        )
        await ctx.events.record(
            tx,
            EventType.LOGIN_SUCCEEDED,
            actor_type=ActorType.USER,
            actor_id=row.user_id,
            ip=ip,
            detail={"grant": "device_code", "client_id": row.client_id},
        )
    ctx.metrics.logins.labels(result="succeeded").inc()
    return pair


async def pending_for(ctx: Context, *, login: HostedLogin, user_code: str, ip: str | None) -> DeviceCodeRow:
    """The pending code a signed-in user typed, for the confirmation page. A wrong one counts toward
    the lockout (429 while it holds), so that 8 letters are enough against guessing."""
    failures = await lockout.check(ctx, login.user_id, ip, scope=LOCKOUT_SCOPE)
    code = normalize_user_code(user_code)
    row = None
    if code is not None:
        async with ctx.db.query() as tx:
            row = await oauth_store.device_code_by_user_code(tx, user_code_hash=sha256_hex(code))
    if row is None or row.status != "pending" or row.expires_at <= utcnow():
        await lockout.record_failure(ctx, login.user_id, ip, scope=LOCKOUT_SCOPE)
        raise UserCodeNotFoundError()
    await lockout.record_success(ctx, login.user_id, ip, failures=failures, scope=LOCKOUT_SCOPE)
    return row


async def decide(ctx: Context, *, login: HostedLogin, user_code: str, approve: bool, ip: str | None) -> DeviceCodeRow:
    """Approve or deny the pending code the user typed (RFC 8628 §3.3)."""
    row = await pending_for(ctx, login=login, user_code=user_code, ip=ip)
    code = normalize_user_code(user_code) or ""
    async with ctx.db.write() as tx:
        status = "approved" if approve else "denied"
        if not await oauth_store.decide_device_code(
            tx, user_code_hash=sha256_hex(code), user_id=login.user_id, status=status, now=utcnow()
        ):
            raise UserCodeNotFoundError()  # decided or expired meanwhile
        await ctx.events.record(
            tx,
            EventType.DEVICE_AUTHORIZATION_APPROVED if approve else EventType.DEVICE_AUTHORIZATION_DENIED,
            actor_type=ActorType.USER,
            actor_id=login.user_id,
            ip=ip,
            detail={"client_id": row.client_id, "session_id": login.session_id},
        )
    return row


def expired(row: DeviceCodeRow, now: datetime | None = None) -> bool:
    return row.expires_at <= (now or utcnow())
