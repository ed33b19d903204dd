"""The admin dashboard (SPEC §8): what admin, support and a plain user get in a real headless Chromium,
the page's security headers and files, and the hourly counts behind its chart."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from playwright.sync_api import expect

from account_manager.routes.dashboard import MODULES, STATIC_TYPES
from shared import tables
from shared.context import Context
from shared.models import EventType
from tests.dashboard.conftest import PHONE, LiveServer, Tab, connect_device, provision, signed_in

STRICT_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
}
COUNTS = {
    "count-users": "users",
    "count-devices": "devices",
    "count-online": "devices_online",
    "count-sessions": "sessions_active",
    "count-logins": "logins_24h",
    "count-failures": "login_failures_24h",
}


def csp(header: str) -> dict[str, str]:
    return {name: value for name, _, value in (part.strip().partition(" ") for part in header.split(";"))}


def stats(server: LiveServer, headers: dict[str, str]) -> dict[str, int]:
    response = httpx.get(f"{server.url}/v1/admin/stats", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def fail_login(server: LiveServer, username: str) -> None:
    response = httpx.post(f"{server.url}/v1/auth/login", json={"username": username, "password": "wrong password!"})
    assert response.status_code == 401, response.text


def expect_counts(tab: Tab, expected: dict[str, int]) -> None:
    for element, key in COUNTS.items():
        expect(tab.page.locator(f"#{element}")).to_have_text(f"{expected[key]:,}")


# --- in the browser ------------------------------------------------------------------------------


def test_admin_signs_in_and_sees_the_counts(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    admin = live_server.staff("admin")
    admin_headers = live_server.login(admin)
    for _ in range(2):
        live_server.login(live_server.register())
    fail_login(live_server, "nobody-at-all")
    provision(live_server, admin_headers, "Hall lamp")

    tab.open()
    tab.screenshot(tmp_path / "sign-in.png")
    signed_in(tab, admin)

    expected = stats(live_server, admin_headers)
    assert expected["users"] == 3 and expected["devices"] == 1 and expected["login_failures_24h"] == 1
    expect_counts(tab, expected)
    chart = tab.page.locator("#chart svg")
    expect(chart.locator("rect.column")).to_have_count(24)
    # This hour's logins (the admin's and the users') and the failure; no device connected.
    expect(chart.locator("rect.bar.s-logins")).to_have_count(1)
    expect(chart.locator("rect.bar.s-failures")).to_have_count(1)
    expect(chart.locator("rect.bar.s-connections")).to_have_count(0)
    expect(tab.page.locator("#total-failures")).to_have_text("1")
    expect(tab.page.locator("#events li[data-type=login_failed]")).to_have_count(1)
    expect(tab.page.locator("#users-table tbody tr")).to_have_count(3)
    tab.screenshot(tmp_path / "dashboard-wide.png")
    assert tab.errors == []


def test_page_fits_a_phone_screen(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    admin = live_server.staff("admin")
    headers = live_server.login(admin)
    owner = live_server.register()
    live_server.login(owner)
    fail_login(live_server, owner.username)
    device = connect_device(live_server, provision(live_server, headers, "Porch camera"))
    try:
        tab.page.set_viewport_size(PHONE)
        signed_in(tab, admin)
        expect(tab.page.locator("#devices-table tbody tr .pill.on")).to_have_count(1)
        expect(tab.page.locator("#chart svg rect.column")).to_have_count(24)
        overflow = tab.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
        tab.screenshot(tmp_path / "dashboard-phone.png")
    finally:
        device.loop_stop()
        device.disconnect()
    assert tab.errors == []


def test_failed_login_by_another_client_appears_live(tab: Tab, live_server: LiveServer) -> None:
    admin = live_server.staff("admin")
    signed_in(tab, admin)
    tab.page.evaluate("window.notReloaded = true")

    fail_login(live_server, "mallory-guessing")

    event = tab.page.locator("#events li[data-type=login_failed]", has_text="mallory-guessing")
    expect(event).to_be_visible(timeout=5_000)
    expect(tab.page.locator("#count-failures")).to_have_text("1", timeout=5_000)
    assert tab.page.evaluate("window.notReloaded === true"), "the page was reloaded"
    assert tab.errors == []


def test_the_type_filter_offers_every_event_type_the_platform_writes(tab: Tab, live_server: LiveServer) -> None:
    """One list of event types (shared.models.EventType), not a copy in the page's script."""
    signed_in(tab, live_server.staff("admin"))
    offered = tab.page.eval_on_selector_all("#filter-type option[value]", "options => options.map(o => o.value)")
    assert [value for value in offered if value] == [type_.value for type_ in EventType]
    assert tab.errors == []


def test_event_filters_narrow_the_live_stream(tab: Tab, live_server: LiveServer) -> None:
    admin = live_server.staff("admin")
    watched = live_server.register()
    other = live_server.register()
    signed_in(tab, admin)

    tab.page.select_option("#filter-type", "login_succeeded")
    filtered = f"user_id={watched.id}"
    with tab.page.expect_request(lambda request: "/events/stream" in request.url and filtered in request.url):
        tab.page.fill("#filter-user", watched.username)
    expect(tab.page.locator("#events li.event")).to_have_count(0)
    live_server.login(other)
    live_server.login(watched)

    expect(tab.page.locator("#events li.event")).to_have_count(1, timeout=5_000)
    expect(tab.page.locator("#events li.event")).to_contain_text(watched.username)
    assert tab.errors == []


def test_disabling_a_user_on_the_page_ends_their_token(tab: Tab, live_server: LiveServer) -> None:
    admin = live_server.staff("admin")
    victim = live_server.register()
    victim_headers = live_server.login(victim)
    assert httpx.get(f"{live_server.url}/v1/users/me", headers=victim_headers).status_code == 200
    signed_in(tab, admin)

    tab.page.fill("#user-search", victim.username)
    row = tab.page.locator(f"#users-table tr[data-user-id='{victim.id}']")
    expect(tab.page.locator("#users-table tbody tr")).to_have_count(1)
    row.locator("button[data-action=disable]").click()
    row.locator("button[data-action=disable]").click()  # the second click confirms

    expect(row.locator(".pill.disabled")).to_be_visible()
    expect(row.locator("button[data-action=enable]")).to_be_visible()
    me = httpx.get(f"{live_server.url}/v1/users/me", headers=victim_headers)
    assert me.status_code == 401, me.text
    assert tab.errors == []


def test_support_sees_everything_but_cannot_disable(tab: Tab, live_server: LiveServer) -> None:
    admin_headers = live_server.login(live_server.staff("admin"))
    support = live_server.staff("support")
    victim = live_server.register()
    uid = provision(live_server, admin_headers, "Garage door")["uid"]
    signed_in(tab, support)

    expect_counts(tab, stats(live_server, admin_headers))
    expect(tab.page.locator("#me-role")).to_have_text("support")
    expect(tab.page.locator(f"#users-table tr[data-user-id='{victim.id}']")).to_be_visible()
    expect(tab.page.locator(f"#devices-table tr[data-uid='{uid}']")).to_be_visible()
    expect(tab.page.locator("#users-table button[data-action], #devices-table button[data-action]")).to_have_count(0)

    support_headers = live_server.login(support)
    patch = httpx.patch(
        f"{live_server.url}/v1/admin/users/{victim.id}", json={"disabled": True}, headers=support_headers
    )
    assert patch.status_code == 403, patch.text
    disable = httpx.post(f"{live_server.url}/v1/admin/devices/{uid}/disable", headers=support_headers)
    assert disable.status_code == 403, disable.text
    assert tab.errors == []


def test_plain_user_is_told_no_and_gets_no_data(tab: Tab, live_server: LiveServer, tmp_path: Path) -> None:
    user = live_server.register()
    asked: list[str] = []
    tab.page.on("request", lambda request: asked.append(request.url))
    tab.open()
    tab.sign_in(user)

    expect(tab.page.locator("#denied-view")).to_be_visible()
    expect(tab.page.locator("#denied-text")).to_contain_text("admin and support users only")
    expect(tab.page.locator("#dashboard-view")).to_be_hidden()
    assert not [url for url in asked if "/v1/admin/" in url], asked
    assert tab.page.locator("#users-table tbody tr").count() == 0
    tab.screenshot(tmp_path / "no-access.png")
    # The API says no as well.
    response = httpx.get(f"{live_server.url}/v1/admin/stats", headers=live_server.login(user))
    assert response.status_code == 403, response.text
    assert tab.errors == []


def test_device_timeline_and_disable_from_the_page(tab: Tab, live_server: LiveServer) -> None:
    admin = live_server.staff("admin")
    headers = live_server.login(admin)
    device = provision(live_server, headers, "Kitchen plug")
    client = connect_device(live_server, device)
    client.disconnect()
    client.loop_stop()
    signed_in(tab, admin)

    row = tab.page.locator(f"#devices-table tr[data-uid='{device['uid']}']")
    row.locator("button.link").click()
    expect(tab.page.locator("#timeline-title")).to_have_text(f"Timeline of {device['uid']}")
    for kind in ("device_provisioned", "device_token_issued", "device_connected"):
        expect(tab.page.locator(f"#timeline li[data-type={kind}]")).to_have_count(1)

    row.locator("button[data-action=disable]").click()
    row.locator("button[data-action=disable]").click()
    expect(row.locator("button[data-action=enable]")).to_be_visible()
    listed = httpx.get(f"{live_server.url}/v1/admin/devices", headers=headers).json()
    assert [d["disabled"] for d in listed if d["uid"] == device["uid"]] == [True]
    # The timeline follows the live stream.
    expect(tab.page.locator("#timeline li[data-type=device_disabled]")).to_have_count(1, timeout=5_000)
    assert tab.errors == []


def test_page_refreshes_its_token_when_the_api_says_401(tab: Tab, live_server: LiveServer) -> None:
    admin = live_server.staff("admin")
    refused: list[str] = []

    def refuse_once(route: Any) -> None:
        # As the API answers an expired access token: the page must refresh it and try again.
        if refused:
            route.continue_()
            return
        refused.append(route.request.headers["authorization"])
        route.fulfill(
            status=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            json={"error": "invalid_token", "detail": "expired"},
        )

    tab.page.route("**/v1/admin/stats", refuse_once)
    with tab.page.expect_response("**/v1/auth/refresh") as refreshed:
        signed_in(tab, admin)
    assert refreshed.value.status == 200
    expect(tab.page.locator("#count-users")).to_have_text("1")
    assert refused, "the stats were never asked for"
    # The one error is the browser's own line about the refused request.
    assert [error for error in tab.errors if "401" not in error] == []


def test_signing_out_leaves_no_data_on_the_page(tab: Tab, live_server: LiveServer) -> None:
    admin = live_server.staff("admin")
    signed_in(tab, admin)
    expect(tab.page.locator("#users-table tbody tr")).to_have_count(1)

    tab.page.click("#logout")

    expect(tab.page.locator("#login-view")).to_be_visible()
    expect(tab.page.locator("#dashboard-view")).to_be_hidden()
    assert tab.page.locator("#users-table tbody tr, #events li").count() == 0
    assert tab.page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert tab.page.context.cookies() == []
    assert tab.errors == []


# --- the page and its files ----------------------------------------------------------------------


class _Markup(HTMLParser):
    """What the CSP forbids or what would reach another origin: inline script and style, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "style":
            self.problems.append("a <style> element")
        if tag == "script" and not named.get("src"):
            self.problems.append("an inline <script>")
        self._in_script = tag == "script"
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"an inline {name} attribute on <{tag}>")
            if name in {"src", "href", "action"} and value and not value.startswith("/admin/static/"):
                self.problems.append(f"{name}={value} on <{tag}>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("script text inline")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_page_sends_a_strict_csp_and_no_framing(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/admin")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert csp(response.headers["content-security-policy"]) == STRICT_CSP
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in response.headers


def test_page_has_no_inline_script_or_style(live_server: LiveServer) -> None:
    parser = _Markup()
    parser.feed(httpx.get(f"{live_server.url}/admin").text)
    assert parser.problems == []


def test_page_loads_the_script_as_modules_all_asked_for_at_once(live_server: LiveServer) -> None:
    page = httpx.get(f"{live_server.url}/admin").text
    assert '<script type="module" src="/admin/static/main.js"></script>' in page
    preloaded = re.findall(r'<link rel="modulepreload" href="/admin/static/([\w.]+)">', page)
    assert sorted(preloaded) == sorted(set(MODULES) - {"main.js"})


def test_static_files_are_served_with_their_type_and_the_csp(live_server: LiveServer) -> None:
    for name, media_type in STATIC_TYPES.items():
        response = httpx.get(f"{live_server.url}/admin/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
        assert csp(response.headers["content-security-policy"]) == STRICT_CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        etag = response.headers["etag"]
        assert httpx.get(f"{live_server.url}/admin/static/{name}", headers={"If-None-Match": etag}).status_code == 304


def test_only_the_known_static_files_are_served(live_server: LiveServer) -> None:
    for name in [
        "index.html",
        "__init__.py",
        "package.json",
        "..%2Fservice.py",
        "main.js.map",
        "MAIN.JS",
        "%2e%2e%2fservice.py",
    ]:
        response = httpx.get(f"{live_server.url}/admin/static/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"] == "not_found"


def test_script_keeps_tokens_in_memory_and_fetches_nothing_elsewhere(live_server: LiveServer) -> None:
    script = "\n".join(httpx.get(f"{live_server.url}/admin/static/{name}").text for name in MODULES)
    for forbidden in (
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "indexedDB",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "EventSource",
    ):
        assert forbidden not in script, forbidden
    for name in [*STATIC_TYPES, ""]:
        text = httpx.get(f"{live_server.url}/admin/static/{name}" if name else f"{live_server.url}/admin").text
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text)) - {"http://www.w3.org"}
        assert urls == set(), f"{name or 'the page'} names another origin: {urls}"


# --- the hourly counts behind the chart ----------------------------------------------------------


async def _insert_events(ctx: Context, rows: list[tuple[datetime, str]]) -> None:
    async with ctx.db.write() as tx:
        for ts, kind in rows:
            values = {"ts": ts, "type": kind, "actor_type": "system", "actor_id": None, "detail": {}}
            await tx.execute(sa.insert(tables.events).values(**values))


def hourly(server: LiveServer, headers: dict[str, str] | None, **params: object) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/admin/stats/hourly", params=params, headers=headers)  # type: ignore[arg-type]


def test_hourly_stats_count_each_hour_of_the_last_day(live_server: LiveServer) -> None:
    now = datetime.now(UTC)
    admin = live_server.login(live_server.staff("admin"))
    live_server.login(live_server.register())
    fail_login(live_server, "somebody")
    old = [(now - timedelta(hours=3), "device_connected")] * 2 + [(now - timedelta(hours=3), "login_failed")]
    live_server.call(_insert_events(live_server.ctx, [*old, (now - timedelta(hours=30), "login_succeeded")]))

    response = hourly(live_server, admin)

    assert response.status_code == 200, response.text
    hours = response.json()
    assert len(hours) == 24
    assert all(row["hour"].endswith("Z") for row in hours)
    starts = [datetime.fromisoformat(row["hour"].replace("Z", "+00:00")) for row in hours]
    assert all(later - earlier == timedelta(hours=1) for earlier, later in pairwise(starts))
    assert starts[-1] <= datetime.now(UTC) < starts[-1] + timedelta(hours=1)  # the current hour comes last
    by_hour = dict(zip(starts, hours, strict=True))
    three_ago = by_hour[(now - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)]
    assert (three_ago["logins"], three_ago["login_failures"], three_ago["device_connections"]) == (0, 1, 2)
    # Two logins (the admin's and the user's) and one failure just now; the login of 30 h ago is outside.
    totals = {key: sum(row[key] for row in hours) for key in ("logins", "login_failures", "device_connections")}
    assert totals == {"logins": 2, "login_failures": 2, "device_connections": 2}


def test_hourly_stats_take_a_number_of_hours(live_server: LiveServer) -> None:
    support = live_server.login(live_server.staff("support"))
    response = hourly(live_server, support, hours=6)
    assert response.status_code == 200 and len(response.json()) == 6
    for bad in (0, 169, "x"):
        assert hourly(live_server, support, hours=bad).status_code == 422, bad


def test_hourly_stats_are_for_admin_and_support_only(live_server: LiveServer) -> None:
    assert hourly(live_server, live_server.login(live_server.register())).status_code == 403
    assert hourly(live_server, live_server.login(live_server.staff("manufacturer"))).status_code == 403
    assert hourly(live_server, None).status_code == 401
