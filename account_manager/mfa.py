"""The second factor (SPEC §12): enrolling a TOTP authenticator, confirming it (which hands out the
recovery codes, once), turning it off, and the second step of a login, which trades a single-use
`mfa_token` of the password step and a code for what the login was for.

Every code works once: the time step of the last accepted code is stored and a step at or below it is
refused, in one conditional UPDATE, so two submissions of one code give one success. Wrong codes and
recovery codes count toward the login lockout of §4 for that username and address, like wrong
passwords."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

from account_manager import mfa_store, store
from account_manager.passwords import passwords
from account_manager.totp import matching_step, new_secret, otpauth_uri, secret_box
from shared import lockout
from shared.clock import sha256_hex, utcnow
from shared.context import Context
from shared.db import Tx
from shared.errors import (
    AccountDisabledError,
    InvalidCodeError,
    InvalidMfaTokenError,
    MfaAlreadyEnabledError,
    NotFoundError,
    ValidationFailedError,
    WrongCodeError,
    WrongFactorError,
    WrongPasswordError,
)
from shared.models import ActorType, EventType

MFA_TOKEN_TTL = 300
MFA_TOKEN_PREFIX = "hsm_"
MAX_MFA_TOKEN = 128
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32, lower case: 16 characters are 80 bits
_CODE = re.compile(r"[0-9]{6}")
_RECOVERY = re.compile(r"[a-z2-7]{16}")


def normal_code(code: str) -> str:
    """A TOTP code as typed ("123 456" too); 422 for anything that cannot be one."""
    cleaned = code.replace(" ", "")
    if not _CODE.fullmatch(cleaned):
        raise ValidationFailedError("code: six digits.")
    return cleaned


def normal_recovery_code(code: str) -> str:
    cleaned = code.replace("-", "").replace(" ", "").lower()
    if not _RECOVERY.fullmatch(cleaned):
        raise ValidationFailedError("recovery_code: 16 letters and digits, as it was shown (dashes optional).")
    return cleaned


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def one_factor(code: str | None, recovery_code: str | None) -> tuple[str | None, str | None]:
    """Exactly one of a code and a recovery code, each in its normal form."""
    if (code is None) == (recovery_code is None):
        raise ValidationFailedError("Send either code or recovery_code.")
    if code is not None:
        return normal_code(code), None
    assert recovery_code is not None
    return None, normal_recovery_code(recovery_code)


# --- enrolment ------------------------------------------------------------------------------------


async def enrol(ctx: Context, *, user_id: str) -> tuple[str, str]:
    """A new TOTP secret for the caller, not in force until confirmed: the secret and its otpauth URI
    (shown this once; only the sealed secret is stored). Enrolling again replaces an unconfirmed one."""
    secret = new_secret()
    box = secret_box(ctx).seal(secret, user_id=user_id)
    async with ctx.db.write() as tx:
        user = await store.user_by_id(tx, user_id=user_id)
        if user is None:
            raise NotFoundError("No such user.")
        if user.mfa_enabled:
            raise MfaAlreadyEnabledError()
        await mfa_store.put_pending_totp(tx, user_id=user_id, secret_box=box, now=utcnow())
    return secret, otpauth_uri(secret, user.username)


async def confirm(ctx: Context, *, user_id: str, sid: str, code: str, ip: str | None) -> list[str]:
    """Turn the enrolled secret on with a code from the app: the ten recovery codes (shown this once,
    stored hashed). Every other session of the user ends: one opened with the password alone before
    the factor existed must not become a full session by a refresh."""
    code = normal_code(code)
    codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
    now = utcnow()
    async with ctx.db.write() as tx:
        row = await mfa_store.totp_of(tx, user_id=user_id)
        if row is not None and row.confirmed:
            raise MfaAlreadyEnabledError()
        if row is None:
            raise InvalidCodeError("Nothing to confirm: enrol first (POST /v1/users/me/mfa/totp).")
        secret = secret_box(ctx).open(row.secret_box, user_id=user_id)
        step = matching_step(secret, code) if secret is not None else None
        if step is None or not await mfa_store.use_step(tx, user_id=user_id, step=step, confirmed=False):
            raise InvalidCodeError()
        await mfa_store.confirm_totp(tx, user_id=user_id, now=now)
        await mfa_store.replace_recovery_codes(
            tx, user_id=user_id, code_hashes=[sha256_hex(normal_recovery_code(c)) for c in codes], now=now
        )
        ctx.revocations.user_changed(tx, user_id)
        ended = await _end_other_sessions(ctx, tx, user_id=user_id, sid=sid, reason="mfa_enabled", now=now)
        await ctx.events.record(
            tx,
            EventType.MFA_ENABLED,
            actor_type=ActorType.USER,
            actor_id=user_id,
            ip=ip,
            detail={"factor": "totp", "sessions_ended": len(ended)},
        )
    return codes


async def disable(
    ctx: Context,
    *,
    user_id: str,
    sid: str,
    password: str,
    code: str | None,
    recovery_code: str | None,
    ip: str | None,
) -> None:
    """Turn the factor off with the password and a code (or a recovery code): both are guesses like a
    login's and counted in the same lockout. Every other session of the user ends."""
    code, recovery_code = one_factor(code, recovery_code)
    user = await _user(ctx, user_id)
    if not user.mfa_enabled:
        raise NotFoundError("No second factor is on.")
    key = user.username.lower()
    failures = await lockout.check(ctx, key, ip)
    if not await passwords(ctx).verify(user.password_hash, password):
        await lockout.record_failure(ctx, key, ip)
        raise WrongPasswordError()
    now = utcnow()
    try:
        async with ctx.db.write() as tx:
            await _check_factor(ctx, tx, user=user, code=code, recovery_code=recovery_code, ip=ip, now=now)
            await mfa_store.remove_factor(tx, user_id=user_id, now=now)
            ctx.revocations.user_changed(tx, user_id)
            ended = await _end_other_sessions(ctx, tx, user_id=user_id, sid=sid, reason="mfa_disabled", now=now)
            await ctx.events.record(
                tx,
                EventType.MFA_DISABLED,
                actor_type=ActorType.USER,
                actor_id=user_id,
                ip=ip,
                detail={"sessions_ended": len(ended)},
            )
    except WrongCodeError:
        await _failed(ctx, user=user, ip=ip, kind="recovery_code" if recovery_code else "code", via="disable")
        raise WrongFactorError() from None
    await lockout.record_success(ctx, key, ip, failures=failures)


# --- on the operator's command line (handshake mfa enrol|reset) -------------------------------------


async def enrol_by_operator(ctx: Context, *, username: str) -> tuple[str, str, list[str]]:
    """A factor set up and in force at once by the platform's operator (who holds the database and the
    keys anyway): the secret, its otpauth URI and the recovery codes, to hand to the user. Every
    session of the user ends, so none opened with the password alone outlives it."""
    secret, codes, now = new_secret(), [new_recovery_code() for _ in range(RECOVERY_CODES)], utcnow()
    async with ctx.db.write() as tx:
        user = await store.user_by_username(tx, username=username)
        if user is None:
            raise NotFoundError(f"No user is called {username!r}.")
        if user.mfa_enabled:
            raise MfaAlreadyEnabledError(f"{user.username} has a second factor already: `handshake mfa reset` first.")
        box = secret_box(ctx).seal(secret, user_id=user.id)
        await mfa_store.put_pending_totp(tx, user_id=user.id, secret_box=box, now=now)
        await mfa_store.confirm_totp(tx, user_id=user.id, now=now)
        hashes = [sha256_hex(normal_recovery_code(c)) for c in codes]
        await mfa_store.replace_recovery_codes(tx, user_id=user.id, code_hashes=hashes, now=now)
        ctx.revocations.user_changed(tx, user.id)
        ended = await _end_other_sessions(ctx, tx, user_id=user.id, sid="", reason="mfa_enabled", now=now)
        await ctx.events.record(
            tx,
            EventType.MFA_ENABLED,
            actor_type=ActorType.SYSTEM,
            actor_id=None,
            ip=None,
            detail={"user_id": user.id, "factor": "totp", "via": "command_line", "sessions_ended": len(ended)},
        )
    return secret, otpauth_uri(secret, user.username), codes


async def reset_by_operator(ctx: Context, *, username: str) -> None:
    """The way back for a user who lost the authenticator and the recovery codes: the factor goes and
    every session ends; the user enrols again (which a required role makes the next thing they do)."""
    now = utcnow()
    async with ctx.db.write() as tx:
        user = await store.user_by_username(tx, username=username)
        if user is None:
            raise NotFoundError(f"No user is called {username!r}.")
        if not user.mfa_enabled:
            raise NotFoundError(f"{user.username} has no second factor.")
        await mfa_store.remove_factor(tx, user_id=user.id, now=now)
        ctx.revocations.user_changed(tx, user.id)
        ended = await _end_other_sessions(ctx, tx, user_id=user.id, sid="", reason="mfa_disabled", now=now)
        await ctx.events.record(
            tx,
            EventType.MFA_DISABLED,
            actor_type=ActorType.SYSTEM,
            actor_id=None,
            ip=None,
            detail={"user_id": user.id, "via": "command_line", "sessions_ended": len(ended)},
        )


# --- the second step of a login -------------------------------------------------------------------


async def begin(ctx: Context, *, user: store.UserRow, ip: str | None) -> str:
    """After a right password, for a user with a factor: a single-use token for the second step,
    valid 5 minutes, from this address only. Stored hashed."""
    token = MFA_TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    async with ctx.db.write() as tx:
        await mfa_store.insert_mfa_token(
            tx,
            token_hash=sha256_hex(token),
            user_id=user.id,
            ip=ip,
            now=now,
            expires_at=now + timedelta(seconds=MFA_TOKEN_TTL),
        )
    return token


async def finish(
    ctx: Context, *, mfa_token: str, code: str | None, recovery_code: str | None, ip: str | None
) -> store.UserRow:
    """The second step: the user, once the token is good (unused, unexpired, issued to this address)
    and the code or recovery code is right. The token and the code are used up together, or neither
    is (a wrong code leaves the token for another try, within the lockout)."""
    code, recovery_code = one_factor(code, recovery_code)
    if not mfa_token or len(mfa_token) > MAX_MFA_TOKEN:
        raise InvalidMfaTokenError()
    token_hash = sha256_hex(mfa_token)
    now = utcnow()
    async with ctx.db.query() as tx:
        row = await mfa_store.mfa_token_by_hash(tx, token_hash=token_hash)
    if row is None or row.used or row.expires_at <= now or row.ip != ip:
        raise InvalidMfaTokenError()
    user = await _user(ctx, row.user_id)
    if user.disabled:
        raise AccountDisabledError()
    key = user.username.lower()
    failures = await lockout.check(ctx, key, ip)
    try:
        async with ctx.db.write() as tx:
            if not await mfa_store.consume_mfa_token(tx, token_hash=token_hash, now=now):
                raise InvalidMfaTokenError()
            await _check_factor(ctx, tx, user=user, code=code, recovery_code=recovery_code, ip=ip, now=now)
    except WrongCodeError:
        await _failed(ctx, user=user, ip=ip, kind="recovery_code" if recovery_code else "code", via="login")
        raise
    await lockout.record_success(ctx, key, ip, failures=failures)
    return user


async def _check_factor(
    ctx: Context,
    tx: Tx,
    *,
    user: store.UserRow,
    code: str | None,
    recovery_code: str | None,
    ip: str | None,
    now: datetime,
) -> None:
    """Use up a right code or recovery code of the user in `tx`; WrongCodeError otherwise (the
    transaction then rolls back whatever else it did)."""
    if recovery_code is not None:
        used = await mfa_store.use_recovery_code(tx, user_id=user.id, code_hash=sha256_hex(recovery_code), now=now)
        if not used:
            raise WrongCodeError()
        left = await mfa_store.recovery_codes_left(tx, user_id=user.id)
        await ctx.events.record(
            tx,
            EventType.RECOVERY_CODE_USED,
            actor_type=ActorType.USER,
            actor_id=user.id,
            ip=ip,
            detail={"recovery_codes_left": left},
        )
        return
    assert code is not None
    row = await mfa_store.totp_of(tx, user_id=user.id)
    secret = secret_box(ctx).open(row.secret_box, user_id=user.id) if row is not None and row.confirmed else None
    step = matching_step(secret, code, now.timestamp()) if secret is not None else None
    if step is None or not await mfa_store.use_step(tx, user_id=user.id, step=step, confirmed=True):
        raise WrongCodeError()


async def _failed(ctx: Context, *, user: store.UserRow, ip: str | None, kind: str, via: str) -> None:
    key = user.username.lower()
    blocked = await lockout.record_failure(ctx, key, ip)
    async with ctx.db.write() as tx:
        await ctx.events.record(
            tx,
            EventType.MFA_FAILED,
            actor_type=ActorType.USER,
            actor_id=user.id,
            ip=ip,
            detail={"username": user.username, "kind": kind, "via": via},
        )
        if blocked:
            await ctx.events.record(
                tx,
                EventType.LOGIN_LOCKED,
                actor_type=ActorType.SYSTEM,
                actor_id=user.id,
                ip=ip,
                detail={"username": user.username, "retry_after": blocked},
            )


async def _user(ctx: Context, user_id: str) -> store.UserRow:
    async with ctx.db.query() as tx:
        user = await store.user_by_id(tx, user_id=user_id)
    if user is None:
        raise InvalidMfaTokenError()
    return user


async def _end_other_sessions(ctx: Context, tx: Tx, *, user_id: str, sid: str, reason: str, now: datetime) -> list[str]:
    sids = await store.active_session_ids(tx, user_id=user_id, now=now, except_sid=sid)
    return await ctx.revocations.revoke_sessions(tx, sids, reason=reason)


async def enrolment_only(ctx: Context, tx: Tx, *, user_id: str, role: str, mfa_enabled: bool | None = None) -> bool:
    """Whether a new access token of this user is good only for enrolling a second factor: a role
    that must have one (HANDSHAKE_MFA_REQUIRED_ROLES) and none yet. Asks the database only for those
    roles, and only when the caller does not know already."""
    if role not in ctx.settings.mfa_required_roles:
        return False
    if mfa_enabled is None:
        mfa_enabled = await mfa_store.user_mfa_enabled(tx, user_id=user_id)
    return not mfa_enabled
