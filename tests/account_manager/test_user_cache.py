"""The per-process cache of user rows behind `GET /v1/users/me` (issue 11): a change made anywhere shows
at once where the fan-out carries it, and within 5 s where the fan-out lost it (each reconciliation
pass tells the cache what changed); while reconciliation cannot confirm its view, the cache answers
nothing and every read goes to the database. A login keeps its user's row cached, as the login left it,
in its own process. Both backends."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from account_manager import accounts, store
from account_manager.passwords import Passwords
from account_manager.user_cache import row_version, user_cache
from shared import revocation
from shared.clock import utcnow
from shared.context import Context
from shared.models import Role
from shared.settings import Settings
from tests.conftest import Users, bearer
from tests.device_connector.helpers import eventually

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


async def changed_unheard(settings: Settings, user_id: str, email: str) -> None:
    """The user's email changed by a process whose fan-out message is lost."""
    async with unheard_process(settings) as other:
        await accounts.update_email(other, user_id=user_id, email=email, ip=None)


async def shown_within_the_bound(client: httpx.AsyncClient, tokens: dict[str, object], email: str) -> None:
    changed = time.monotonic()
    while await email_shown(client, tokens) != email:
        assert time.monotonic() - changed < WITHIN, "a cached user row outlived a lost fan-out by 5 s"
        await asyncio.sleep(0.1)


async def cached(client: httpx.AsyncClient, ctx: Context, user_id: str, tokens: dict[str, object]) -> None:
    """Read /v1/users/me until the row is in the cache (a read that raced the login's own change
    notice is not kept, by design)."""
    deadline = time.monotonic() + WITHIN
    while user_cache(ctx).get(user_id) is None:
        assert time.monotonic() < deadline, "GET /v1/users/me never filled the cache"
        await email_shown(client, tokens)
        await asyncio.sleep(0.05)


async def test_a_change_whose_fan_out_was_lost_shows_within_seconds(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)
    assert await email_shown(client, tokens) is None  # from the cache
    await changed_unheard(settings, user["id"], "moved@example.com")
    await shown_within_the_bound(client, tokens, "moved@example.com")


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
    cache = user_cache(ctx)
    # As if the last successful pass were long ago (the database unreachable for a while).
    monkeypatch.setattr(ctx.revocations, "_last_ok", time.monotonic() - ctx.settings.revocation_max_staleness - 1)
    assert cache.get(user["id"]) is None


async def test_a_read_that_raced_a_change_is_not_kept(users: Users, ctx: Context) -> None:
    user, _ = await users.new()
    cache = user_cache(ctx)
    ticket = cache.ticket()
    async with ctx.db.query() as tx:
        before = await store.user_by_id(tx, user_id=user["id"])
    assert before is not None
    await accounts.update_email(ctx, user_id=user["id"], email="raced@example.com", ip=None)
    cache.put(user["id"], before, ticket)  # the read of before the change comes back late
    assert cache.get(user["id"]) is None


async def test_a_login_keeps_its_users_fresh_row_cached_through_the_passes_that_report_it(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    """The login changed the row (its last login): this process keeps the row as the login left it,
    and neither the echo of its own change notice nor the reconciliation passes that report the
    change for the next seconds forget it."""
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)
    cache = user_cache(ctx)
    earlier = cache.get(user["id"])
    assert earlier is not None
    await users.login(user["username"])
    fresh = cache.get(user["id"])
    assert fresh is not None and fresh.last_login_at is not None
    assert earlier.last_login_at is None or fresh.last_login_at > earlier.last_login_at
    await ctx.revocations.reconcile()
    await ctx.revocations.reconcile()
    assert cache.get(user["id"]) == fresh
    shown = (await client.get("/v1/users/me", headers=bearer(tokens))).json()["last_login_at"]
    assert shown is not None and datetime.fromisoformat(shown) == fresh.last_login_at


async def test_a_lost_change_after_a_login_still_shows_within_seconds(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    """The row a login kept is forgotten by the first pass that reports another version of it."""
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)  # the first login's notices have come and gone
    await users.login(user["username"])
    assert user_cache(ctx).get(user["id"]) is not None
    await changed_unheard(settings, user["id"], "later@example.com")
    await shown_within_the_bound(client, tokens, "later@example.com")


async def test_a_read_from_before_a_login_does_not_replace_the_row_it_left(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)
    cache = user_cache(ctx)
    ticket = cache.ticket()
    async with ctx.db.query() as tx:
        before = await store.user_by_id(tx, user_id=user["id"])
    assert before is not None
    await users.login(user["username"])
    cache.put(user["id"], before, ticket)  # the read of before the login comes back late
    kept = cache.get(user["id"])
    assert kept is not None and kept.last_login_at is not None and before.last_login_at is not None
    assert kept.last_login_at > before.last_login_at


@pytest.mark.parametrize(
    ("versions", "kept"),
    [
        ("same", True),  # the notice of the write the cached row shows
        ("other", False),
        ("none", False),  # from a writer that names no version
        ("malformed", False),  # as if it named none
        ("short", False),  # one per id, or none at all
    ],
)
async def test_a_change_notice_forgets_the_row_unless_it_names_the_version_cached(
    client: httpx.AsyncClient, users: Users, ctx: Context, versions: str, kept: bool
) -> None:
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)
    cache = user_cache(ctx)
    row = cache.get(user["id"])
    assert row is not None
    marker = f"marker-{secrets.token_hex(4)}"  # tells when the notice has been dealt with
    heard: list[str] = []
    ctx.revocations.watch_versions("user", lambda ids, _: heard.extend(ids))
    message: dict[str, object] = {"kind": "user", "ids": [user["id"], marker], "at": time.time()}
    message["versions"] = {
        "same": [row_version(row), None],
        "other": [row_version(row) + 1, None],
        "malformed": [str(row_version(row)), None],
        "short": [row_version(row)],
    }.get(versions)
    if versions == "none":
        del message["versions"]
    await ctx.fanout.publish(revocation.CHANNEL, message)
    assert await eventually(lambda: marker in heard)
    assert (cache.get(user["id"]) == row) is kept


async def test_a_change_heard_while_a_login_commits_is_not_overwritten_by_it(users: Users, ctx: Context) -> None:
    """Another process's change of the row is heard between the login's write and its commit: the
    login's row may be the older one, so it is forgotten instead of kept."""
    user, _ = await users.new()
    cache = user_cache(ctx)
    async with ctx.db.query() as tx:
        row = await store.user_by_id(tx, user_id=user["id"])
    assert row is not None
    ticket = cache.ticket()
    cache.replace(user["id"], row, ticket)  # nothing heard meanwhile: kept
    assert cache.get(user["id"]) == row
    ticket = cache.ticket()
    cache.forget([user["id"]], [row_version(row) + 1])  # the notice of another write
    cache.replace(user["id"], row, ticket)
    assert cache.get(user["id"]) is None


async def test_a_user_disabled_while_logging_in_gets_no_session(
    client: httpx.AsyncClient, users: Users, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disable commits after the password was checked and before the login's own write: the row
    the login's write returns says so, and no session is handed out."""
    user, _ = await users.new()
    _, admin_tokens = await users.admin(ctx, "admin")
    admin_id = (await client.get("/v1/users/me", headers=bearer(admin_tokens))).json()["id"]
    verify = Passwords.verify

    async def verify_then_disable(self: Passwords, stored_hash: str | None, password: str) -> bool:
        ok = await verify(self, stored_hash, password)
        await accounts.admin_update_user(ctx, actor_id=admin_id, user_id=user["id"], role=None, disabled=True, ip=None)
        return ok

    monkeypatch.setattr(Passwords, "verify", verify_then_disable)
    response = await client.post(
        "/v1/auth/login", json={"username": user["username"], "password": "correct horse battery"}
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "account_disabled"
    async with ctx.db.query() as tx:
        assert await store.active_session_ids(tx, user_id=user["id"], now=utcnow()) == []


async def test_a_pass_tells_a_change_once_though_it_reads_it_again(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    """Each pass re-reads ten seconds of changes (one committed late is still seen): a change already
    told, with its version, is not told again, so caches are not churned every second; a change the
    fan-out lost is told by the first pass that reads it."""
    user, tokens = await users.new()
    await cached(client, ctx, user["id"], tokens)
    heard: list[str] = []
    ctx.revocations.watch_versions("user", lambda ids, _: heard.extend(ids))
    await ctx.revocations.reconcile()
    assert user["id"] not in heard  # the login was told when it committed
    await changed_unheard(settings, user["id"], "once@example.com")
    await ctx.revocations.reconcile()
    await ctx.revocations.reconcile()
    assert heard.count(user["id"]) == 1
    assert await email_shown(client, tokens) == "once@example.com"
