"""Authorization codes (RFC 6749 §4.1): issued at the authorization endpoint to a signed-in browser,
redeemed once at the token endpoint for a session of their own. Short-lived (60 s), stored hashed;
a code presented again revokes the session its first redemption opened (§4.1.2)."""

from __future__ import annotations

from datetime import timedelta

from account_manager import oauth_store
from account_manager.oauth_store import CodeRow, HostedLogin
from account_manager.sessions import TokenPair, issue_session, new_session_id
from shared.clock import sha256_hex, utcnow
from shared.context import Context
from shared.db import Tx
from shared.models import ActorType, EventType

CODE_TTL = 60
MAX_CODE = 256


def hash_code(code: str) -> str:
    return sha256_hex(code)


async def save_code(
    ctx: Context,
    *,
    code: str,
    client_id: str,
    login: HostedLogin,
    redirect_uri: str | None,
    code_challenge: str | None,
    code_challenge_method: str | None,
) -> None:
    now = utcnow()
    async with ctx.db.write() as tx:
        await oauth_store.insert_code(
            tx,
            code_hash=hash_code(code),
            client_id=client_id,
            user_id=login.user_id,
            login_session_id=login.session_id,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            code_challenge_method=code_challenge_method,
            created_at=now,
            expires_at=now + timedelta(seconds=CODE_TTL),
        )


async def find_code(ctx: Context, *, code: str, client_id: str, ip: str | None) -> CodeRow | None:
    """The code if this client may redeem it now; None otherwise (RFC 6749 §5.2 invalid_grant). A
    code used before is a replay: what it issued is revoked at once."""
    if not code or len(code) > MAX_CODE:
        return None
    async with ctx.db.query() as tx:
        row = await oauth_store.code_by_hash(tx, code_hash=hash_code(code))
    if row is None or row.client_id != client_id:
        return None
    if row.used_at is not None:
        async with ctx.db.write() as tx:
            await _revoke_replayed(ctx, tx, row, ip)
        return None
    if row.expires_at <= utcnow() or not row.usable:
        return None
    return row


async def redeem_code(
    ctx: Context, *, code: str, row: CodeRow, ip: str | None, user_agent: str | None
) -> TokenPair | None:
    """A new session for the code's user and client, in the transaction that uses the code up; None
    when a parallel redemption used it first (then that one's session is revoked, as for any replay)."""
    code_hash = hash_code(code)
    sid = new_session_id()
    async with ctx.db.write() as tx:
        if not await oauth_store.consume_code(tx, code_hash=code_hash, now=utcnow()):
            winner = await oauth_store.code_by_hash(tx, code_hash=code_hash)
            if winner is not None:
                await _revoke_replayed(ctx, tx, winner, ip)
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
        await oauth_store.set_code_session(tx, code_hash=code_hash, sid=sid)
        await ctx.events.record(
            tx,
            EventType.LOGIN_SUCCEEDED,
            actor_type=ActorType.USER,
            actor_id=row.user_id,
            ip=ip,
            detail={"grant": "authorization_code", "client_id": row.client_id},
        )
    ctx.metrics.logins.labels(result="succeeded").inc()
    return pair


async def _revoke_replayed(ctx: Context, tx: Tx, row: CodeRow, ip: str | None) -> None:
    sids = [row.session_id] if row.session_id else []
    await ctx.revocations.revoke_sessions(tx, sids, reason="code_reused")
    await ctx.events.record(
        tx,
        EventType.AUTHORIZATION_CODE_REUSED,
        actor_type=ActorType.USER,
        actor_id=row.user_id,
        ip=ip,
        detail={"client_id": row.client_id, "session_id": row.session_id},
    )
