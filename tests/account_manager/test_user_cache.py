"""The per-process cache of user rows behind `GET /v1/users/me` (issue 11): a change made anywhere shows
at once where the fan-out carries it, and within 5 s where the fan-out lost it (each reconciliation
pass tells the cache what changed); while reconciliation cannot confirm its view, the cache answers
nothing and every read goes to the database. Both backends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from account_manager import accounts, store
from shared.context import Context
from shared.models import Role
from shared.settings import Settings
from tests.conftest import Users, bearer

WITHIN = 5.0


@contextlib.asynccontextmanager
async def unheard_process(settings: Settings) -> AsyncIterator[Context]:
    """Another process of the deployment whose fan-out messages never reach the app under test: its
    own in-process fan-out without Redis, a Redis prefix nobody else listens on with it. What a lost
    fan-out message looks like from the receiving end."""
    other = Context.build(settings.model_copy(update={"redis_prefix": settings.redis_prefix + "unheard:"}))
    await other.start()
    try:
        yield other
    finally:
        await other.stop()


async def email_shown(client: httpx.AsyncClient, tokens: dict[str, object]) -> object:
    response = await client.get("/v1/users/me", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return response.json()["email"]


async def cached(client: httpx.AsyncClient, ctx: Context, user_id: str, tokens: dict[str, object]) -> None:
    """Read /v1/users/me until the row is in the cache (a read that raced the login's own change
    notice is not kept, by design)."""
    deadline = time.monotonic() + WITHIN
    while accounts.user_cache(ctx).get(user_id) is None:
        assert time.monotonic() < deadline, "GET /v1/users/me never filled the cache"
        await email_shown(client, tokens)
        await asyncio.sleep(0.05)


async def test_a_change_whose_fan_out_was_lost_shows_within_seconds(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)
    assert await email_shown(client, tokens) is None  # from the cache
    async with unheard_process(settings) as other:
        await accounts.update_email(other, user_id=user["id"], email="moved@example.com", ip=None)
    changed = time.monotonic()
    while await email_shown(client, tokens) != "moved@example.com":
        assert time.monotonic() - changed < WITHIN, "a cached user row outlived a lost fan-out by 5 s"
        await asyncio.sleep(0.1)


async def test_a_role_change_elsewhere_is_never_shown_stale_past_the_bound(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    """The security case: the row says what the user is. A demotion made by a process whose fan-out
    was lost ends the session at once (the token is refused: revocation), and the row itself is
    re-read within the bound, for a new session of the same user."""
    _, admin_tokens = await users.admin(ctx, "support")
    me = (await client.get("/v1/users/me", headers=bearer(admin_tokens))).json()
    assert me["role"] == "support"
    async with unheard_process(settings) as other:
        await accounts.admin_update_user(
            other, actor_id=me["id"], user_id=me["id"], role=Role.USER, disabled=None, ip=None
        )
    changed = time.monotonic()
    while True:
        response = await client.get("/v1/users/me", headers=bearer(admin_tokens))
        if response.status_code == 401:
            break  # the session ended with the role change
        assert time.monotonic() - changed < WITHIN, "the demoted session went on past 5 s"
        await asyncio.sleep(0.1)
    fresh = await users.login(me["username"])
    assert (await client.get("/v1/users/me", headers=bearer(fresh))).json()["role"] == "user"


async def test_a_change_in_this_process_shows_at_once(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert await email_shown(client, tokens) is None
    response = await client.patch("/v1/users/me", json={"email": "here@example.com"}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    assert await email_shown(client, tokens) == "here@example.com"


async def test_nothing_is_served_from_the_cache_while_reconciliation_is_unconfirmed(
    client: httpx.AsyncClient, users: Users, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)
    cache = accounts.user_cache(ctx)
    # As if the last successful pass were long ago (the database unreachable for a while).
    monkeypatch.setattr(ctx.revocations, "_last_ok", time.monotonic() - ctx.settings.revocation_max_staleness - 1)
    assert cache.get(user["id"]) is None


async def test_a_read_that_raced_a_change_is_not_kept(users: Users, ctx: Context) -> None:
    user, _ = await users.new()
    cache = accounts.user_cache(ctx)
    ticket = cache.ticket()
    async with ctx.db.query() as tx:
        before = await store.user_by_id(tx, user_id=user["id"])
    assert before is not None
    await accounts.update_email(ctx, user_id=user["id"], email="raced@example.com", ip=None)
    cache.put(user["id"], before, ticket)  # the read of before the change comes back late
    assert cache.get(user["id"]) is None
