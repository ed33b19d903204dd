"""The dashboard's users, devices and timelines in a real Chromium (SPEC §8): every moment written one
way on the local clock (here India's), presence told as an operator reads it, and users searched and
paged by the server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from shared import tables
from shared.context import Context
from tests.dashboard.conftest import LiveServer, Tab, connect_device, new_tab, provision, signed_in
from tests.fleet import seed_history

ZONE = ZoneInfo("Asia/Kolkata")


@pytest.fixture
def tab_in_india(browser: Any, live_server: LiveServer) -> Iterator[Tab]:
    with new_tab(browser, live_server.url, timezone_id=ZONE.key) as opened:
        yield opened


def local_text(iso: str) -> str:
    """How the page writes a moment: HH:MM:SS on the local clock, after YYYY-MM-DD unless it is today."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZONE)
    if moment.date() == datetime.now(ZONE).date():
        return f"{moment:%H:%M:%S}"
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def times_in(tab: Tab, selector: str) -> list[tuple[str, str]]:
    """(datetime attribute, text) of every <time> under `selector`."""
    found: list[tuple[str, str]] = tab.page.eval_on_selector_all(
        f"{selector} time", "nodes => nodes.map(n => [n.getAttribute('datetime'), n.textContent])"
    )
    return found


def test_every_time_on_the_page_is_written_one_way(tab_in_india: Tab, live_server: LiveServer) -> None:
    tab = tab_in_india
    admin = live_server.staff("admin")
    device = provision(live_server, live_server.login(admin), "Hall lamp")
    # Three days of its history, the newest now: the list and the timeline hold today's and older ones.
    live_server.call(seed_history(live_server.ctx, uid=device["uid"], count=30, every=timedelta(hours=3)))
    client = connect_device(live_server, device)  # online: "since" a time
    try:
        signed_in(tab, admin)
        tab.page.locator(f"#devices-table tr[data-uid='{device['uid']}'] button.link").click()
        # Its history, its provisioning, its token and its connection.
        expect(tab.page.locator("#timeline li[data-type]")).to_have_count(33)
        seen: list[str] = []
        for part in ("#events", "#timeline", "#users-table", "#devices-table"):
            found = times_in(tab, part)
            assert found, f"no time in {part}"
            assert [text for _, text in found] == [local_text(iso) for iso, _ in found], part
            seen += [text for _, text in found]
    finally:
        client.loop_stop()
        client.disconnect()
    assert any(len(text) == 8 for text in seen) and any(len(text) == 19 for text in seen), seen
    assert tab.errors == []


async def presence_of(ctx: Context, uid: str) -> Any:
    async with ctx.db.read() as tx:
        return (await tx.execute(sa.select(tables.devices).where(tables.devices.c.uid == uid))).one()


def test_an_online_device_says_since_when_it_is_connected(tab_in_india: Tab, live_server: LiveServer) -> None:
    tab = tab_in_india
    admin = live_server.staff("admin")
    headers = live_server.login(admin)
    online, gone, never = (provision(live_server, headers, name) for name in ("Online", "Gone", "Never"))
    first = connect_device(live_server, gone)
    first.disconnect()
    first.loop_stop()
    client = connect_device(live_server, online)
    try:
        signed_in(tab, admin)
        rows = {d["uid"]: tab.page.locator(f"#devices-table tr[data-uid='{d['uid']}']") for d in (online, gone, never)}
        expect(rows[online["uid"]].locator(".pill.on")).to_have_text("online")
        expect(rows[gone["uid"]].locator(".pill.off")).to_have_text("offline", timeout=5_000)
        connected = live_server.call(presence_of(live_server.ctx, online["uid"])).connected_at
        left = live_server.call(presence_of(live_server.ctx, gone["uid"])).last_seen

        since = rows[online["uid"]].locator("[data-presence]")
        expect(since).to_have_attribute("data-presence", "since")
        expect(since).to_have_text(f"since {local_text(connected.isoformat())}")
        last = rows[gone["uid"]].locator("[data-presence]")
        expect(last).to_have_attribute("data-presence", "last-seen")
        expect(last).to_have_text(f"last seen {local_text(left.isoformat())}")
        expect(rows[never["uid"]].locator("[data-presence]")).to_have_text("never seen")
    finally:
        client.loop_stop()
        client.disconnect()
    assert tab.errors == []


async def add_crew(ctx: Context, count: int) -> None:
    """`count` users written straight into the table (crew00, crew01, ...; every ninth support), oldest first."""
    now = datetime.now(UTC)
    rows = [
        {
            "id": secrets.token_hex(10),
            "username": f"crew{n:02d}",
            "username_key": f"crew{n:02d}",
            "email": None,
            "password_hash": "-",  # no password matches: nobody logs in as these
            "role": "support" if n % 9 == 0 else "user",
            "disabled": False,
            "created_at": now - timedelta(minutes=count - n),
            "updated_at": now,
        }
        for n in range(count)
    ]
    async with ctx.db.write() as tx:
        await tx.execute(sa.insert(tables.users), rows)


def shown_users(tab: Tab) -> list[str]:
    found: list[str] = tab.page.eval_on_selector_all(
        "#users-table tr[data-username]", "rows => rows.map(r => r.dataset.username)"
    )
    return found


def test_users_are_searched_and_paged_by_the_server(tab: Tab, live_server: LiveServer) -> None:
    admin = live_server.staff("admin")
    live_server.call(add_crew(live_server.ctx, 45))
    asked: list[str] = []
    tab.page.on("request", lambda request: asked.append(request.url) if "/v1/admin/users?" in request.url else None)
    signed_in(tab, admin)
    pager = tab.page.locator("#users-pager")
    expect(pager.locator("[data-range]")).to_have_text("1–20 of 46")
    assert shown_users(tab)[:2] == [admin.username, "crew44"]  # newest first

    pager.locator("[data-step=next]").click()
    expect(pager.locator("[data-range]")).to_have_text("21–40 of 46")
    pager.locator("[data-step=last]").click()
    expect(pager.locator("[data-range]")).to_have_text("41–46 of 46")
    expect(pager.locator("[data-page]")).to_have_text("Page 3 of 3")
    expect(pager.locator("[data-step=next]")).to_be_disabled()
    tab.page.select_option("#users-pager [data-size]", "50")
    expect(pager.locator("[data-range]")).to_have_text("1–46 of 46")
    expect(tab.page.locator("#users-table tr[data-username]")).to_have_count(46)

    tab.page.fill("#user-search", "CREW1")
    expect(pager.locator("[data-range]")).to_have_text("1–10 of 10")
    assert sorted(shown_users(tab)) == [f"crew{n}" for n in range(10, 20)]
    tab.page.select_option("#user-role", "support")
    expect(pager.locator("[data-range]")).to_have_text("1–1 of 1")
    assert shown_users(tab) == ["crew18"]
    tab.page.fill("#user-search", "nobody-like-this")
    expect(tab.page.locator("#users-table td.empty")).to_have_text("No user matches.")
    expect(pager.locator("[data-range]")).to_have_text("none")
    # The search and the paging were the server's: each page was asked for with its limit and offset.
    assert any("limit=20&offset=40" in url for url in asked), asked
    assert any("query=CREW1" in url and "role=support" in url for url in asked), asked
    assert tab.errors == []
