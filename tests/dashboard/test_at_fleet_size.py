"""The dashboard with 50,000 devices in the database, in a real Chromium: server-side search and paging
from X-Total-Count, and a page that stays readable while it scrolls (the sticky live-events card covers
no other card) and when a disable button is armed (it fits its cell)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from account_manager.accounts import create_user
from shared.models import Role
from tests.conftest import Backend, make_settings
from tests.dashboard.conftest import PASSWORD, PHONE, WIDE, Account, LiveServer, Tab, new_tab, reset_database, signed_in
from tests.device_connector.helpers import running_connector
from tests.fleet import MODELS, fleet_uid, seed_fleet, seed_history

FLEET = 50_000

# The cards whose boxes the live-events card meets, at the current scroll position ([] when none).
OVERLAPS = """() => {
  const card = document.querySelector('.events-card').getBoundingClientRect();
  const meets = (r) => r.width > 0 && r.height > 0 && r.left < card.right - 0.5 && card.left < r.right - 0.5
    && r.top < card.bottom - 0.5 && card.top < r.bottom - 0.5;
  return [...document.querySelectorAll('#dashboard-view .card:not(.events-card), #dashboard-view .count')]
    .filter((node) => meets(node.getBoundingClientRect()))
    .map((node) => node.getAttribute('aria-labelledby') || node.className);
}"""

# Where an armed button sits: inside its cell and its card, and its table needs no sideways scrolling.
FITS = """(button) => {
  const inside = (inner, outer) => inner.left >= outer.left - 0.5 && inner.right <= outer.right + 0.5
    && inner.top >= outer.top - 0.5 && inner.bottom <= outer.bottom + 0.5;
  const box = button.getBoundingClientRect();
  const wrap = button.closest('.table-wrap');
  return {
    label: button.textContent,
    inCell: inside(box, button.closest('td').getBoundingClientRect()),
    inCard: inside(box, button.closest('.card').getBoundingClientRect()),
    tableScrolls: wrap.scrollWidth > wrap.clientWidth,
  };
}"""


@dataclass(frozen=True)
class Fleet:
    server: LiveServer
    admin: Account
    owners: list[Account]  # the last one has the longest username there can be
    uids: list[str]  # oldest first


@pytest.fixture(scope="module")
def fleet(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One server and its 50,000 devices for the tests of this module, which only read (seeding takes
    seconds: once, not per test)."""
    settings = make_settings(backend, tmp_path_factory.mktemp("fleet"))
    reset_database(settings)
    server = LiveServer(settings)
    server.start()
    try:
        # The connector's start-up census (every device not connected goes offline) is written by the
        # journal in the background: seeded presence must come after it, or it is undone.
        server.call(running_connector(server.ctx).journal.idle())
        admin = server.staff("admin")
        owners = [server.staff("user") for _ in range(3)]
        longest = server.call(create_user(server.ctx, username="u" + "w" * 63, password=PASSWORD, role=Role.USER))
        owners.append(Account(longest.id, longest.username, "user"))
        uids = server.call(seed_fleet(server.ctx, count=FLEET, owners=[owner.id for owner in owners]), timeout=120)
        server.call(seed_history(server.ctx, uid=uids[-1], count=45))
        yield Fleet(server, admin, owners, uids)
    finally:
        server.stop()


@pytest.fixture
def fleet_tab(browser: Any, fleet: Fleet) -> Iterator[Tab]:
    with new_tab(browser, fleet.server.url) as opened:
        yield opened


def api_total(server: LiveServer, headers: dict[str, str], **params: Any) -> int:
    response = httpx.get(f"{server.url}/v1/admin/devices", params={"limit": 1, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return int(response.headers["x-total-count"])


def shown_uids(tab: Tab) -> list[str]:
    found: list[str] = tab.page.eval_on_selector_all(
        "#devices-table tbody tr[data-uid]", "rows => rows.map(r => r.dataset.uid)"
    )
    return found


def search_devices(tab: Tab, text: str, total: int) -> None:
    """Type into the search box; wait for the pager to show the total of that search."""
    tab.page.fill("#device-search", text)
    expect(tab.page.locator("#devices-pager [data-range]")).to_have_text(
        f"1–{min(total, 50)} of {total:,}" if total else "none", timeout=5_000
    )


def test_searching_and_paging_50000_devices(fleet_tab: Tab, fleet: Fleet, tmp_path: Path) -> None:
    tab, live_server, owners, uids = fleet_tab, fleet.server, fleet.owners, fleet.uids
    headers = live_server.login(fleet.admin)
    signed_in(tab, fleet.admin)
    expect(tab.page.locator("#count-devices")).to_have_text(f"{FLEET:,}")
    expect(tab.page.locator("#devices-pager [data-range]")).to_have_text(f"1–20 of {FLEET:,}")
    assert shown_uids(tab) == uids[::-1][:20]  # newest first
    tab.page.select_option("#devices-pager [data-size]", "50")
    expect(tab.page.locator("#devices-table tbody tr[data-uid]")).to_have_count(50)

    # The start of a UID, in lower case.
    prefix = fleet_uid(1234)[:15]
    total = api_total(live_server, headers, query=prefix)
    assert 0 < total < FLEET
    search_devices(tab, prefix.lower(), total)
    assert all(uid.startswith(prefix) for uid in shown_uids(tab))
    # The start of an owner's username: every third device is unbound, the rest are spread over three.
    owner = owners[1]
    total = api_total(live_server, headers, query=owner.username)
    search_devices(tab, owner.username, total)
    owners_shown = tab.page.eval_on_selector_all(
        "#devices-table td[data-label=Owner]", "c => c.map(n => n.textContent)"
    )
    assert set(owners_shown) == {owner.username}
    # The start of a model, with the online filter: the last page holds what is left over.
    total = api_total(live_server, headers, query="lamp", online="true")
    tab.page.select_option("#device-online", "true")
    search_devices(tab, "LAMP", total)
    tab.page.click("#devices-pager [data-step=last]")
    pages = -(-total // 50)
    expect(tab.page.locator("#devices-pager [data-page]")).to_have_text(f"Page {pages:,} of {pages:,}")
    expect(tab.page.locator("#devices-table tbody tr[data-uid]")).to_have_count(total - (pages - 1) * 50)
    models = tab.page.eval_on_selector_all(
        "#devices-table tr[data-uid] td[data-label=Device] .sub", "c => c.map(n => n.textContent)"
    )
    assert set(models) == {MODELS[2]}
    expect(tab.page.locator("#devices-table .pill.on")).to_have_count(total - (pages - 1) * 50)
    tab.page.click("#devices-pager [data-step=first]")
    expect(tab.page.locator("#devices-pager [data-range]")).to_have_text(f"1–50 of {total:,}")
    tab.page.click("#devices-pager [data-step=next]")
    expect(tab.page.locator("#devices-pager [data-range]")).to_have_text(f"51–100 of {total:,}")
    # Nothing matches: said so, not an error.
    search_devices(tab, "no such thing", 0)
    expect(tab.page.locator("#devices-table td.empty")).to_have_text("No device matches.")
    tab.screenshot(tmp_path / "fleet-search.png")
    assert tab.errors == []


def scroll_positions(tab: Tab, step: int = 250) -> list[int]:
    bottom = tab.page.evaluate("document.documentElement.scrollHeight - window.innerHeight")
    assert bottom > 1500, f"the page is only {bottom} px taller than the window: nothing to scroll"
    return [*range(0, bottom, step), bottom]


def test_the_live_events_card_covers_no_other_card_at_any_scroll_position(
    fleet_tab: Tab, fleet: Fleet, tmp_path: Path
) -> None:
    tab, uids = fleet_tab, fleet.uids
    signed_in(tab, fleet.admin)
    tab.page.select_option("#devices-pager [data-size]", "100")
    expect(tab.page.locator("#devices-table tbody tr[data-uid]")).to_have_count(100)
    tab.page.locator(f"#devices-table tr[data-uid='{uids[-1]}'] button.link").click()
    expect(tab.page.locator("#timeline li[data-type]").first).to_be_visible()

    stuck = 0
    for y in scroll_positions(tab):
        tab.page.evaluate(f"window.scrollTo(0, {y})")
        assert tab.page.evaluate(OVERLAPS) == [], f"at {y} px"
        top = tab.page.evaluate("document.querySelector('.events-card').getBoundingClientRect().top")
        stuck += round(top) == 15  # 1rem from the top of the window: the card follows the reader
    assert stuck >= 3, "the live-events card never stuck to the top: the test saw no scrolling card"
    tab.page.screenshot(path=str(tmp_path / "fleet-scrolled-to-bottom.png"))
    assert tab.errors == []


def test_the_armed_disable_button_fits_its_cell(fleet_tab: Tab, fleet: Fleet, tmp_path: Path) -> None:
    tab, longest = fleet_tab, fleet.owners[-1]
    signed_in(tab, fleet.admin)
    # The newest device of the longest username (seed_fleet: every third unbound, the rest by turns).
    uid = fleet.uids[next(n for n in reversed(range(FLEET)) if n % 3 and n % len(fleet.owners) == 3)]
    tab.page.fill("#device-search", uid)
    expect(tab.page.locator("#devices-table tbody tr[data-uid]")).to_have_count(1)
    expect(tab.page.locator("#devices-table td[data-label=Owner]")).to_have_text(longest.username)
    for width in (WIDE["width"], PHONE["width"]):
        tab.page.set_viewport_size({"width": width, "height": 900})
        user_button = tab.page.locator(f"#users-table tr[data-user-id='{longest.id}'] button[data-action=disable]")
        device_button = tab.page.locator(f"#devices-table tr[data-uid='{uid}'] button[data-action=disable]")
        for button in (user_button, device_button):
            button.scroll_into_view_if_needed()
            button.click()  # armed, not yet confirmed
            expect(button).to_have_text("Confirm")
            place = button.evaluate(FITS)
            assert place == {"label": "Confirm", "inCell": True, "inCard": True, "tableScrolls": False}, width
        tab.page.mouse.move(0, 0)
        tab.page.screenshot(path=str(tmp_path / f"armed-{width}.png"), full_page=True)
    # Never confirmed: nothing was disabled.
    expect(tab.page.locator("#devices-table .pill.disabled, #users-table .pill.disabled")).to_have_count(0)
    assert tab.errors == []
