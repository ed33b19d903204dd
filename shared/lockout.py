"""Login throttling (SPEC §4). Counted per (username, IP) and per IP, with a temporary block whose wait
doubles on each further failure; per account only a slow-down, never a lock, so that nobody can lock
anybody out (Keycloak #26172). Checked before the password hash: a guess that is refused costs us
nothing (PERF §5)."""

from __future__ import annotations

import asyncio

from shared.context import Context
from shared.errors import TooManyAttemptsError

WINDOW = 15 * 60
PER_USER_IP = 5
PER_IP = 20
PER_ACCOUNT_SLOWDOWN = 50
FIRST_BLOCK = 60
MAX_BLOCK = 3600
SLOWDOWN_SECONDS = 1.0


def _keys(scope: str, username_key: str, ip: str | None) -> tuple[str, str, str]:
    return (f"{scope}:ui:{username_key}:{ip}", f"{scope}:ip:{ip}", f"{scope}:u:{username_key}")


def _block_seconds(count: int, threshold: int) -> int:
    factor: int = 2 ** max(0, count - threshold)
    return min(MAX_BLOCK, FIRST_BLOCK * factor)


async def check(ctx: Context, username_key: str, ip: str | None, *, scope: str = "login") -> int:
    """Raise 429 while blocked; slow down an account under spread-out guessing. Returns the failures
    counted for this (username, IP): a success with none before it has nothing to reset."""
    user_ip, per_ip, account = _keys(scope, username_key, ip)
    left, (failures_here, failures) = await ctx.counters.status([user_ip, per_ip], [user_ip, account])
    if left:
        raise TooManyAttemptsError(left)
    if failures > PER_ACCOUNT_SLOWDOWN:
        await asyncio.sleep(SLOWDOWN_SECONDS)
    return failures_here


async def record_failure(ctx: Context, username_key: str, ip: str | None, *, scope: str = "login") -> int:
    """Count a failure; the seconds of a block it set (0 for none)."""
    user_ip, per_ip, account = _keys(scope, username_key, ip)
    await ctx.counters.hit(account, WINDOW)
    blocked = 0
    for key, threshold in ((user_ip, PER_USER_IP), (per_ip, PER_IP)):
        count = await ctx.counters.hit(key, WINDOW)
        if count >= threshold:
            seconds = _block_seconds(count, threshold)
            await ctx.counters.block(key, seconds)
            blocked = max(blocked, seconds)
    return blocked


async def record_success(
    ctx: Context, username_key: str, ip: str | None, *, failures: int, scope: str = "login"
) -> None:
    """Forget this (username, IP)'s failures. `failures` is what `check` returned: with none, a
    round trip to Redis on every login would reset nothing (a block implies failures, and `check`
    refused the attempt while one was set)."""
    if failures:
        user_ip, _, _ = _keys(scope, username_key, ip)
        await ctx.counters.reset(user_ip)
