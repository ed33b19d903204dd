"""Token introspection (RFC 7662), revocation (RFC 7009) and exchange for a partner audience."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from account_manager import store
from account_manager.sessions import REFRESH_PREFIX, hash_refresh
from shared.clock import utcnow
from shared.context import Context
from shared.errors import InvalidTargetError, InvalidTokenError, RateLimitedError
from shared.models import ActorType, EventType
from shared.tokens import TYP, Claims, TokenKind, peek_unverified


@dataclass(frozen=True, slots=True)
class Introspection:
    """What an active token is (RFC 7662 §2.2). An inactive one is None: the answer then says nothing
    more than that, whatever made it so."""

    sub: str
    exp: int
    iat: int
    aud: str
    iss: str
    token_use: str
    jti: str | None = None  # none for a refresh token (it is opaque)
    role: str | None = None
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class ExchangedToken:
    access_token: str
    expires_in: int


def _kind_of(ctx: Context, token: str) -> tuple[TokenKind, str] | None:
    """Which kind of JWT this claims to be, to pick the checks; the checks decide."""
    peeked = peek_unverified(token)
    if peeked is None:
        return None
    header, payload = peeked
    typ = str(header.get("typ", "")).lower()
    aud = payload.get("aud")
    audience = aud if isinstance(aud, str) else None
    if typ == TYP[TokenKind.DEVICE]:
        return TokenKind.DEVICE, ctx.settings.audience
    if audience in ctx.settings.partner_audiences:
        return TokenKind.EXCHANGED, audience
    return TokenKind.ACCESS, ctx.settings.audience


async def _verified(ctx: Context, token: str) -> Claims | None:
    kind = _kind_of(ctx, token)
    if kind is None:
        return None
    try:
        return await ctx.auth.authenticate(token, kind[0], audience=kind[1])
    except InvalidTokenError:
        return None


async def rate_limit_introspection(ctx: Context, ip: str | None) -> None:
    second = int(time.time())
    if await ctx.counters.hit(f"introspect:{ip}:{second}", 2) > ctx.settings.introspect_rate:
        raise RateLimitedError(1)


async def introspect(ctx: Context, token: str) -> Introspection | None:
    """The token, if it is active; None for expired, revoked, forged or malformed alike."""
    if len(token) > 8192:
        return None
    if token.startswith(REFRESH_PREFIX):
        return await _introspect_refresh(ctx, token)
    claims = await _verified(ctx, token)
    if claims is None:
        return None
    return Introspection(
        sub=claims.sub,
        exp=claims.exp,
        iat=claims.iat,
        aud=claims.aud,
        iss=ctx.settings.issuer,
        token_use=claims.kind.value,
        jti=claims.jti,
        role=claims.role,
        sid=claims.sid,
    )


async def _introspect_refresh(ctx: Context, token: str) -> Introspection | None:
    ctx.revocations.require_confirmed()
    async with ctx.db.read() as tx:
        row = await store.refresh_by_hash(tx, token_hash=hash_refresh(token))
    now = utcnow()
    if row is None or row.used_at is not None or row.session_revoked or row.user_disabled or row.expires_at <= now:
        return None
    return Introspection(
        sub=row.user_id,
        exp=int(row.expires_at.timestamp()),
        iat=int(row.created_at.timestamp()),
        aud=ctx.settings.audience,
        iss=ctx.settings.issuer,
        token_use="refresh",
        role=row.user_role,
        sid=row.session_id,
    )


async def revoke(ctx: Context, token: str, *, ip: str | None) -> None:
    """RFC 7009 §2.2: answer 200 whatever the token was; a valid one ends its session."""
    if token.startswith(REFRESH_PREFIX):
        async with ctx.db.write() as tx:
            row = await store.refresh_by_hash(tx, token_hash=hash_refresh(token))
            if row is not None and not row.session_revoked:
                await ctx.revocations.revoke_sessions(tx, [row.session_id], reason="revoked")
                await _record_revoked(ctx, tx, row.user_id, row.session_id, ip)
        return
    claims = await _verified(ctx, token)
    if claims is None:
        return
    async with ctx.db.write() as tx:
        if claims.kind is TokenKind.ACCESS and claims.sid is not None:
            await ctx.revocations.revoke_sessions(tx, [claims.sid], reason="revoked")
            await _record_revoked(ctx, tx, claims.sub, claims.sid, ip)
        else:
            # A device token or an exchanged token: that token alone, by its id.
            await ctx.revocations.revoke_jti(tx, claims.jti, expires_at=datetime.fromtimestamp(claims.exp, UTC))


async def _record_revoked(ctx: Context, tx: Any, user_id: str, sid: str, ip: str | None) -> None:
    await ctx.events.record(
        tx, EventType.SESSION_REVOKED, actor_type=ActorType.USER, actor_id=user_id, ip=ip, detail={"session_id": sid}
    )


async def exchange(
    ctx: Context, *, user_id: str, sid: str, audience: str, nonce: str | None, ip: str | None
) -> ExchangedToken:
    if audience not in ctx.settings.partner_audiences:
        raise InvalidTargetError()
    ttl = ctx.settings.exchanged_ttl
    token, _ = ctx.issuer.exchanged(user_id=user_id, sid=sid, audience=audience, nonce=nonce, ttl=ttl)
    async with ctx.db.write() as tx:
        await ctx.events.record(
            tx,
            EventType.TOKEN_EXCHANGED,
            actor_type=ActorType.USER,
            actor_id=user_id,
            ip=ip,
            detail={"audience": audience},
        )
    return ExchangedToken(access_token=token, expires_in=ttl)
