"""Prefix search at fleet size (shared.search): the range a prefix becomes, and that the admin lists'
searches and first pages are planned as index lookups on both backends, never a scan of the table."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.context import Context
from shared.search import successor
from tests.conftest import Users, bearer, statements
from tests.fleet import seed_fleet, seed_users


@pytest.mark.parametrize(
    ("prefix", "above"),
    [
        ("AB", "AC"),
        ("a", "b"),
        ("A9", "A:"),
        ("z\U0010ffff", "{"),
        ("\U0010ffff", None),
        ("\ud7ff", "\ue000"),  # past the surrogates, which UTF-8 cannot carry
    ],
)
def test_a_prefix_ends_below_its_successor(prefix: str, above: str | None) -> None:
    assert successor(prefix) == above


async def plans(ctx: Context, sent: list[tuple[str, Any]], table: str) -> list[str]:
    """The plan of each statement that reads `table`. PostgreSQL is told to avoid scans, so that only a
    statement no index can answer is planned with one (on a small table a scan is otherwise cheaper)."""
    found = []
    async with ctx.db.engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in sent:
            if f"FROM {table}" not in statement or not statement.lstrip().startswith("SELECT"):
                continue
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = (await conn.exec_driver_sql(explain + statement, parameters)).all()
            found.append("\n".join(str(row[0] if postgres else row[-1]) for row in rows))
        await conn.rollback()
    return found


def scans(plan: str, table: str) -> bool:
    """Whether the plan reads every row of `table` (an index walked in order to find a page is not that)."""
    return f"Seq Scan on {table}" in plan or any(line.strip() == f"SCAN {table}" for line in plan.splitlines())


async def admin_headers(users: Users, ctx: Context, *, devices: int = 0) -> dict[str, str]:
    """An admin's headers, with `devices` devices and a few thousand users in the database (and its
    statistics fresh: on tables of a row or two a scan is the planner's right choice)."""
    others = await seed_users(ctx, count=3000)
    _, tokens = await users.admin(ctx)
    headers = bearer(tokens)
    me = (await users.client.get("/v1/users/me", headers=headers)).json()
    await seed_fleet(ctx, count=devices, owners=[me["id"], *others])
    return headers


@pytest.mark.parametrize("query", ["AK0000000000000001", "cam", "admin"])
async def test_a_device_search_is_answered_by_indexes(
    client: httpx.AsyncClient, users: Users, ctx: Context, query: str
) -> None:
    headers = await admin_headers(users, ctx, devices=5000)
    with statements(ctx) as sent:
        response = await client.get("/v1/admin/devices", params={"query": query, "limit": 20}, headers=headers)
    assert response.status_code == 200, response.text
    planned = await plans(ctx, sent, "devices")
    assert len(planned) == 2, sent  # the total and the page
    assert [plan for plan in planned if scans(plan, "devices") or scans(plan, "users")] == []


async def test_a_page_of_devices_walks_the_index_of_newest_first(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    headers = await admin_headers(users, ctx, devices=5000)
    with statements(ctx) as sent:
        response = await client.get("/v1/admin/devices", params={"offset": 4000, "limit": 20}, headers=headers)
    assert response.status_code == 200, response.text
    page = (await plans(ctx, sent, "devices"))[-1]
    assert "ix_devices_created_at_uid" in page, page
    assert "Sort" not in page and "TEMP B-TREE" not in page, page


@pytest.mark.parametrize("query", ["alice", "alice@example", "0123456789abcdefghij"])
async def test_a_user_search_is_answered_by_indexes(
    client: httpx.AsyncClient, users: Users, ctx: Context, query: str
) -> None:
    headers = await admin_headers(users, ctx)
    with statements(ctx) as sent:
        response = await client.get("/v1/admin/users", params={"query": query}, headers=headers)
    assert response.status_code == 200, response.text
    planned = await plans(ctx, sent, "users")
    assert len(planned) == 2, sent
    assert [plan for plan in planned if scans(plan, "users")] == []
