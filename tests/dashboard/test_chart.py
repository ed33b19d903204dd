"""The dashboard's chart of logins, failures and device connections per hour (SPEC §8), in a real
Chromium: a quiet day looks like nothing happened, a few events stay small, and hovering an hour tells
its counts, on the local clock (here India's, half an hour off UTC's hours)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from shared import tables
from shared.context import Context
from tests.dashboard.conftest import LiveServer, Tab, new_tab, signed_in

ZONE = "Asia/Kolkata"


@pytest.fixture
def tab_in_india(browser: Any, live_server: LiveServer) -> Iterator[Tab]:
    with new_tab(browser, live_server.url, timezone_id=ZONE) as opened:
        yield opened


async def age_every_event(ctx: Context, *, by: timedelta) -> None:
    async with ctx.db.write() as tx:
        await tx.execute(sa.update(tables.events).values(ts=datetime.now(UTC) - by))


def axis_labels(tab: Tab) -> list[str]:
    found: list[str] = tab.page.eval_on_selector_all("#chart text.axis", "nodes => nodes.map(n => n.textContent)")
    return found


def test_a_quiet_day_reads_as_no_data_yet(tab: Tab, live_server: LiveServer) -> None:
    signed_in(tab, live_server.staff("admin"))
    expect(tab.page.locator("#chart rect.bar.s-logins")).to_have_count(1)  # the admin's own login
    expect(tab.page.locator("#chart-empty")).to_be_hidden()

    live_server.call(age_every_event(live_server.ctx, by=timedelta(days=2)))
    live_server.register()  # an event the chart does not count: the page reloads its counts

    expect(tab.page.locator("#chart-empty")).to_be_visible(timeout=5_000)
    expect(tab.page.locator("#chart-empty")).to_contain_text("No data yet")
    expect(tab.page.locator("#chart rect.bar")).to_have_count(0)
    expect(tab.page.locator("#chart line.baseline")).to_have_count(1)
    assert axis_labels(tab)[:5] == ["0", "1", "2", "3", "4"]  # a zero baseline, not a scale around nothing
    titles = tab.page.eval_on_selector_all("#chart text.axis-title", "nodes => nodes.map(n => n.textContent)")
    assert titles == ["Hour (local time)", "Per hour"]
    for total in ("#total-logins", "#total-failures", "#total-connections"):
        expect(tab.page.locator(total)).to_have_text("0")
    assert tab.errors == []


def test_one_login_stays_a_small_bar_on_an_axis_up_to_four(tab: Tab, live_server: LiveServer) -> None:
    """A fresh install has the admin's login only: one short bar, not a line climbing to the top."""
    signed_in(tab, live_server.staff("admin"))
    bar = tab.page.locator("#chart rect.bar.s-logins")
    expect(bar).to_have_count(1)
    assert axis_labels(tab)[:5] == ["0", "1", "2", "3", "4"]
    height = float(bar.get_attribute("height") or 0)
    baseline = float(tab.page.locator("#chart line.baseline").get_attribute("y1") or 0)
    top = float(tab.page.locator("#chart line.grid").last.get_attribute("y1") or 0)
    assert height == pytest.approx((baseline - top) / 4, abs=0.5)
    assert tab.errors == []


def hour_span(start: datetime) -> str:
    local = start.astimezone(ZoneInfo(ZONE))
    return f"{local:%H:%M}–{local + timedelta(hours=1):%H:%M}"


def test_hovering_a_bar_shows_its_hour_and_counts(tab_in_india: Tab, live_server: LiveServer) -> None:
    tab = tab_in_india
    admin = live_server.staff("admin")
    failed = httpx.post(f"{live_server.url}/v1/auth/login", json={"username": "nobody", "password": "wrong one!"})
    assert failed.status_code == 401
    signed_in(tab, admin)
    hours = httpx.get(f"{live_server.url}/v1/admin/stats/hourly", headers=live_server.login(admin)).json()
    this_hour = datetime.fromisoformat(hours[-1]["hour"].replace("Z", "+00:00"))

    tip = tab.page.locator("#chart-tip")
    tab.page.mouse.move(0, 0)  # off the chart (the sign-in click may have left it over it)
    expect(tip).to_be_hidden()
    tab.page.locator("#chart rect.bar.s-failures").hover()
    expect(tip).to_be_visible()
    lines = tip.locator("tspan").all_text_contents()
    assert lines[0] == hour_span(this_hour)  # e.g. 17:30–18:30: where that UTC hour lies on India's clock
    assert lines[1:] == ["Logins: 1", "Failures: 1", "Device connections: 0"]

    # An hour without events has no bar; its column answers the same way.
    tab.page.locator('#chart rect.column[data-hour="0"]').hover()
    expect(tip.locator("tspan").first).to_have_text(hour_span(this_hour - timedelta(hours=23)))
    assert tip.locator("tspan").all_text_contents()[1:] == ["Logins: 0", "Failures: 0", "Device connections: 0"]
    tab.page.mouse.move(0, 0)
    expect(tip).to_be_hidden()
    assert tab.errors == []
