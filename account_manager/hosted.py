"""Logins on the hosted pages (the authorization endpoint's login page and /device). Signing in there
opens a session like any other (listed, revocable, ended by logout-all, a disable or a password
change) that a browser holds as an HttpOnly cookie instead of tokens; its password step is the API's
own, with the same lockout (§4) and events."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from account_manager import mfa, oauth_store, sessions, store
from account_manager.oauth_store import HostedLogin
from account_manager.sessions import new_session_id
from shared.clock import sha256_hex, utcnow
from shared.context import Context
from shared.models import ActorType, EventType

HOSTED_LOGIN_TTL = 12 * 3600  # a working day; the apps' own sessions last as long as their refresh tokens
MAX_COOKIE = 100


async def sign_in(
    ctx: Context, *, username: str, password: str, ip: str | None, user_agent: str | None
) -> tuple[str, HostedLogin] | str:
    """The password step of the hosted page: the cookie of a new hosted login and who it is, or, for a
    user with a second factor, the `mfa_token` that the code form carries to `sign_in_with_factor`
    (the API's own second step: single use, 5 minutes, this address only, the same lockout)."""
    user = await sessions.check_password(ctx, username=username, password=password, ip=ip)
    if user.mfa_enabled:
        return await mfa.begin(ctx, user=user, ip=ip)
    return await open_login(ctx, user=user, ip=ip, user_agent=user_agent)


async def sign_in_with_factor(
    ctx: Context, *, mfa_token: str, typed: str, ip: str | None, user_agent: str | None
) -> tuple[str, HostedLogin]:
    """The code step of the hosted page: one box takes a TOTP code (six digits) or a recovery code."""
    cleaned = typed.replace(" ", "")
    code, recovery = (cleaned, None) if cleaned.isdigit() else (None, typed)
    user = await mfa.finish(ctx, mfa_token=mfa_token, code=code, recovery_code=recovery, ip=ip)
    return await open_login(ctx, user=user, ip=ip, user_agent=user_agent)


async def open_login(
    ctx: Context, *, user: store.UserRow, ip: str | None, user_agent: str | None
) -> tuple[str, HostedLogin]:
    token = secrets.token_urlsafe(32)
    sid = new_session_id()
    now = utcnow()
    async with ctx.db.write() as tx:
        ctx.revocations.user_changed(tx, user.id)  # its last login changes
        await oauth_store.open_hosted_login(
            tx,
            token_hash=sha256_hex(token),
            sid=sid,
            user_id=user.id,
            now=now,
            expires_at=now + timedelta(seconds=HOSTED_LOGIN_TTL),
            ip=ip,
            user_agent=user_agent,
        )
        await ctx.events.record(
            tx,
            EventType.LOGIN_SUCCEEDED,
            actor_type=ActorType.USER,
            actor_id=user.id,
            ip=ip,
            detail={"via": "hosted_page", "session_id": sid},
        )
    ctx.metrics.logins.labels(result="succeeded").inc()
    return token, HostedLogin(sid, user.id, user.username, user.role)


async def current_login(ctx: Context, token: str | None) -> HostedLogin | None:
    """The live login of a browser's cookie, read from the database (the record of revocation)."""
    if not token or len(token) > MAX_COOKIE:
        return None
    async with ctx.db.query() as tx:
        return await oauth_store.hosted_login(tx, token_hash=sha256_hex(token), now=utcnow())


async def sign_out(ctx: Context, *, login: HostedLogin, ip: str | None) -> None:
    async with ctx.db.write() as tx:
        await ctx.revocations.revoke_sessions(tx, [login.session_id], reason="logout")
        await ctx.events.record(
            tx,
            EventType.LOGOUT,
            actor_type=ActorType.USER,
            actor_id=login.user_id,
            ip=ip,
            detail={"via": "hosted_page", "session_id": login.session_id},
        )


def form_token(secret: str) -> str:
    """The anti-forgery token of a hosted form, derived from a cookie the page's own origin set
    (HttpOnly, so no script and no other site can read it): a forged form cannot carry it."""
    return hmac.new(secret.encode(), b"handshake hosted form", hashlib.sha256).hexdigest()


def form_token_ok(secret: str | None, submitted: str | None) -> bool:
    if not secret or not submitted or len(secret) > MAX_COOKIE:
        return False
    return hmac.compare_digest(form_token(secret), submitted)
