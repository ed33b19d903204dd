"""Sessions: log in, refresh with rotation and reuse detection, log out (SPEC §4).

A session is what a refresh token belongs to; every access token carries its id (`sid`), so ending a
session ends every token of it at once, wherever it is checked."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from account_manager import mfa, store
from account_manager.passwords import passwords
from account_manager.user_cache import row_version, user_cache
from shared import lockout
from shared.clock import sha256_hex, utcnow
from shared.context import Context
from shared.db import Tx
from shared.errors import (
    AccountDisabledError,
    InvalidCredentialsError,
    InvalidGrantError,
    MfaRequiredError,
    NotFoundError,
    RefreshTokenReusedError,
)
from shared.models import ActorType, EventType

REFRESH_PREFIX = "hsr_"  # opaque to clients; lets introspection tell a refresh token at a glance


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    token_type: str = "Bearer"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def hash_refresh(token: str) -> str:
    return sha256_hex(token)


def new_session_id() -> str:
    return secrets.token_hex(16)


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)  # 256 bits


def _seal_key(refresh_token: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"handshake refresh grace").derive(
        refresh_token.encode()
    )


def seal_pair(refresh_token: str, pair: TokenPair, *, access_exp: int, refresh_exp: int) -> bytes:
    """The pair handed out for `refresh_token`, readable only by whoever holds that token: a replay
    within the grace window gets this same pair back, and nothing in the database reveals it."""
    nonce = secrets.token_bytes(12)
    body = orjson.dumps({"a": pair.access_token, "ae": access_exp, "r": pair.refresh_token, "re": refresh_exp})
    return nonce + AESGCM(_seal_key(refresh_token)).encrypt(nonce, body, None)


def open_pair(refresh_token: str, box: bytes, now: datetime) -> TokenPair | None:
    try:
        body = orjson.loads(AESGCM(_seal_key(refresh_token)).decrypt(box[:12], box[12:], None))
    except (InvalidTag, ValueError):
        return None
    stamp = int(now.timestamp())
    return TokenPair(
        access_token=body["a"],
        expires_in=max(0, body["ae"] - stamp),
        refresh_token=body["r"],
        refresh_expires_in=max(0, body["re"] - stamp),
    )


async def issue_session(
    ctx: Context,
    tx: Tx,
    *,
    user_id: str,
    role: str,
    ip: str | None,
    user_agent: str | None,
    client_id: str | None = None,
    sid: str | None = None,
    mfa_enabled: bool | None = None,
) -> TokenPair:
    """A new session and its first token pair: what a password login, an authorization code and a
    device code all end in (the OAuth grants name the client it was issued to, and choose the
    session id beforehand to tie their code to it). For a user who must enrol a second factor and
    has none, the access token is good only for enrolling (SPEC §12)."""
    settings = ctx.settings
    now = utcnow()
    sid = sid or new_session_id()
    refresh_token = new_refresh_token()
    user = await store.open_session(
        tx,
        sid=sid,
        user_id=user_id,
        refresh_hash=hash_refresh(refresh_token),
        now=now,
        expires_at=now + timedelta(seconds=settings.refresh_ttl),
        ip=ip,
        user_agent=user_agent,
        client_id=client_id,
    )
    if user is not None:
        # The row as it is under the login's own write: a disable or a role change committed since the
        # password was checked is not handed a fresh session with what was read before it.
        if user.disabled:
            raise AccountDisabledError()
        role, mfa_enabled = user.role, user.mfa_enabled
        # Its last login changed: this process keeps the row as the login left it (unless another change
        # of it came in meanwhile), the others forget it.
        user_cache(ctx).keep_on_commit(tx, user_id, user)
        ctx.revocations.user_changed(tx, user_id, version=row_version(user))
    else:
        ctx.revocations.user_changed(tx, user_id)
    enrolment = await mfa.enrolment_only(ctx, tx, user_id=user_id, role=role, mfa_enabled=mfa_enabled)
    access, _ = ctx.issuer.access(
        user_id=user_id, sid=sid, role=role, ttl=settings.access_ttl, client_id=client_id, mfa_enrolment=enrolment
    )
    return TokenPair(access, settings.access_ttl, refresh_token, settings.refresh_ttl)


async def login(ctx: Context, *, username: str, password: str, ip: str | None, user_agent: str | None) -> TokenPair:
    """The password login; for a user with a second factor, MfaRequiredError with the `mfa_token` to
    finish it with at POST /v1/auth/mfa (SPEC §12)."""
    user = await check_password(ctx, username=username, password=password, ip=ip)
    if user.mfa_enabled:
        raise MfaRequiredError(await mfa.begin(ctx, user=user, ip=ip))
    return await open_session(ctx, user=user, ip=ip, user_agent=user_agent)


async def login_with_factor(
    ctx: Context,
    *,
    mfa_token: str,
    code: str | None,
    recovery_code: str | None,
    ip: str | None,
    user_agent: str | None,
) -> TokenPair:
    """The second step of a login: the `mfa_token` of the password step and a code or recovery code."""
    user = await mfa.finish(ctx, mfa_token=mfa_token, code=code, recovery_code=recovery_code, ip=ip)
    return await open_session(ctx, user=user, ip=ip, user_agent=user_agent, detail={"mfa": True})


async def open_session(
    ctx: Context,
    *,
    user: store.UserRow,
    ip: str | None,
    user_agent: str | None,
    detail: dict[str, object] | None = None,
) -> TokenPair:
    async with ctx.db.write() as tx:
        pair = await issue_session(
            ctx, tx, user_id=user.id, role=user.role, ip=ip, user_agent=user_agent, mfa_enabled=user.mfa_enabled
        )
        await ctx.events.record(
            tx, EventType.LOGIN_SUCCEEDED, actor_type=ActorType.USER, actor_id=user.id, ip=ip, detail=detail
        )
    ctx.metrics.logins.labels(result="succeeded").inc()
    return pair


async def check_password(ctx: Context, *, username: str, password: str, ip: str | None) -> store.UserRow:
    """The password step of every login (the API's and the hosted page's): one lockout (§4) counted in
    one place, failures recorded as events. The user, once the password is right and the account on."""
    key = username.lower()
    failures = await lockout.check(ctx, key, ip)
    async with ctx.db.query() as tx:
        user = await store.user_by_username(tx, username=username)
    ok = await passwords(ctx).verify(user.password_hash if user else None, password)
    if not ok or user is None:
        blocked = await lockout.record_failure(ctx, key, ip)
        async with ctx.db.write() as tx:
            actor = user.id if user else None
            await ctx.events.record(
                tx,
                EventType.LOGIN_FAILED,
                actor_type=ActorType.USER,
                actor_id=actor,
                ip=ip,
                detail={"username": username},
            )
            if blocked:
                await ctx.events.record(
                    tx,
                    EventType.LOGIN_LOCKED,
                    actor_type=ActorType.SYSTEM,
                    actor_id=actor,
                    ip=ip,
                    detail={"username": username, "retry_after": blocked},
                )
        ctx.metrics.logins.labels(result="failed").inc()
        raise InvalidCredentialsError()
    # Told only to someone who knows the password: a disabled account is no secret to its owner.
    if user.disabled:
        raise AccountDisabledError()
    # With a second factor the failures are forgotten only once the code is right too: a password
    # alone must not reset the count that bounds guessing the code.
    if not user.mfa_enabled:
        await lockout.record_success(ctx, key, ip, failures=failures)
    return user


async def refresh(ctx: Context, *, refresh_token: str, ip: str | None, user_agent: str | None) -> TokenPair:
    # Never consume a refresh token we might not be able to honour: an app treats 401 as final.
    ctx.revocations.require_confirmed()
    settings = ctx.settings
    token_hash = hash_refresh(refresh_token)
    async with ctx.db.write() as tx:
        row = await store.refresh_by_hash(tx, token_hash=token_hash)
        now = utcnow()
        if row is None or row.session_revoked or row.user_disabled or row.expires_at <= now:
            raise InvalidGrantError()
        new_token = new_refresh_token()
        access, access_exp = ctx.issuer.access(
            user_id=row.user_id,
            sid=row.session_id,
            role=row.user_role,
            ttl=settings.access_ttl,
            client_id=row.client_id,
            # A session of a user who has enrolled since it began gets full tokens from here on: the
            # enrolment ended every other session, and this one proved the new factor.
            mfa_enrolment=row.user_role in settings.mfa_required_roles and not row.user_mfa_enabled,
        )
        expires_at = now + timedelta(seconds=settings.refresh_ttl)
        pair = TokenPair(access, settings.access_ttl, new_token, settings.refresh_ttl)
        box = seal_pair(refresh_token, pair, access_exp=access_exp, refresh_exp=int(expires_at.timestamp()))
        if row.used_at is None and await store.consume_refresh(
            tx, token_hash=token_hash, now=now, successor_hash=hash_refresh(new_token), grace_box=box
        ):
            await store.insert_refresh(
                tx, token_hash=hash_refresh(new_token), sid=row.session_id, now=now, expires_at=expires_at
            )
            await store.touch_session(
                tx, sid=row.session_id, now=now, expires_at=expires_at, ip=ip, user_agent=user_agent
            )
            await ctx.events.record(
                tx, EventType.TOKEN_REFRESHED, actor_type=ActorType.USER, actor_id=row.user_id, ip=ip
            )
            return pair
        replay = await _grace_replay(tx, refresh_token, token_hash, settings.refresh_reuse_grace, now)
        if replay is not None:
            return replay
        await ctx.revocations.revoke_sessions(tx, [row.session_id], reason="refresh_reuse")
        await ctx.events.record(
            tx,
            EventType.REFRESH_REUSE_DETECTED,
            actor_type=ActorType.USER,
            actor_id=row.user_id,
            ip=ip,
            detail={"session_id": row.session_id},
        )
    # Reached only after the revocation above has committed.
    raise RefreshTokenReusedError()


async def _grace_replay(tx: Tx, refresh_token: str, token_hash: str, grace: int, now: datetime) -> TokenPair | None:
    """The same token again within the grace window, while its successor is still unused: the same pair."""
    row = await store.refresh_by_hash(tx, token_hash=token_hash)  # re-read: a parallel request may have won
    if row is None or row.used_at is None or row.grace_box is None or row.successor_hash is None:
        return None
    if now - row.used_at > timedelta(seconds=grace):
        return None
    successor = await store.refresh_by_hash(tx, token_hash=row.successor_hash)
    if successor is None or successor.used_at is not None:
        return None
    return open_pair(refresh_token, row.grace_box, now)


async def logout(ctx: Context, *, user_id: str, sid: str, ip: str | None) -> None:
    async with ctx.db.write() as tx:
        await ctx.revocations.revoke_sessions(tx, [sid], reason="logout")
        await ctx.events.record(tx, EventType.LOGOUT, actor_type=ActorType.USER, actor_id=user_id, ip=ip)


async def logout_all(ctx: Context, *, user_id: str, ip: str | None) -> None:
    async with ctx.db.write() as tx:
        sids = await store.active_session_ids(tx, user_id=user_id, now=utcnow())
        await ctx.revocations.revoke_sessions(tx, sids, reason="logout_all")
        await ctx.events.record(
            tx, EventType.LOGOUT, actor_type=ActorType.USER, actor_id=user_id, ip=ip, detail={"sessions": len(sids)}
        )


async def revoke_session(ctx: Context, *, user_id: str, sid: str, ip: str | None) -> None:
    """End one of the caller's own sessions; anyone else's is 404, as if it did not exist."""
    async with ctx.db.write() as tx:
        if await store.session_owner(tx, sid=sid) != user_id:
            raise NotFoundError("No such session.")
        await ctx.revocations.revoke_sessions(tx, [sid], reason="revoked")
        await ctx.events.record(
            tx,
            EventType.SESSION_REVOKED,
            actor_type=ActorType.USER,
            actor_id=user_id,
            ip=ip,
            detail={"session_id": sid},
        )


async def end_all_sessions(
    ctx: Context, tx: Tx, *, user_id: str, reason: str, except_sid: str | None = None
) -> list[str]:
    sids = await store.active_session_ids(tx, user_id=user_id, now=utcnow(), except_sid=except_sid)
    return await ctx.revocations.revoke_sessions(tx, sids, reason=reason)


async def list_sessions(ctx: Context, *, user_id: str) -> list[store.SessionRow]:
    """The user's live sessions, most recently used first."""
    async with ctx.db.read() as tx:
        return await store.list_sessions(tx, user_id=user_id, now=utcnow())
