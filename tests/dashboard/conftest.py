"""Fixtures of the dashboard tests: a real uvicorn server on a free port (a browser and an event stream need
real HTTP; httpx's ASGI transport buffers whole responses), a headless Chromium driven by Playwright, and
users of each role. No Chromium: the browser tests skip with the reason, except in CI (CI=true), where
they fail."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import paho.mqtt.client as paho
import pytest
import uvicorn
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import expect

from account_manager.accounts import create_user
from shared.app import create_app
from shared.context import Context
from shared.models import Role
from shared.settings import Settings
from shared.testing import free_port
from tests.conftest import IN_CI, Backend, _reset_postgres, make_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"
WIDE = {"width": 1440, "height": 1000}
PHONE = {"width": 390, "height": 844}
T = TypeVar("T")


class LiveServer:
    """The whole app under uvicorn in a thread of its own, with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: FastAPI = create_app(settings, migrate=True)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            ws="none",
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=2,  # an event stream left open must not hold the shutdown up
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        # Ready, not only listening: with Redis, token checks answer 503 until the fan-out has subscribed.
        while not (self.server.started and self._ready()):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server on {self.url} did not get ready")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the test server did not stop"

    @property
    def ctx(self) -> Context:
        return self.app.state.ctx  # type: ignore[no-any-return]

    def call(self, coro: Coroutine[Any, Any, T], *, timeout: float = 20) -> T:
        """Run a coroutine on the server's loop (to use its Context) and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def staff(self, role: str) -> Account:
        """A user of another type, created the way `handshake users create` does."""
        username = f"{role}{secrets.token_hex(4)}"
        user = self.call(create_user(self.ctx, username=username, password=PASSWORD, role=Role(role)))
        return Account(user.id, username, role)

    def register(self) -> Account:
        username = f"user{secrets.token_hex(4)}"
        response = httpx.post(f"{self.url}/v1/auth/register", json={"username": username, "password": PASSWORD})
        assert response.status_code == 201, response.text
        return Account(response.json()["id"], username, "user")

    def login(self, account: Account) -> dict[str, str]:
        """Bearer headers of a fresh session of `account`."""
        response = httpx.post(f"{self.url}/v1/auth/login", json={"username": account.username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


@dataclass(frozen=True)
class Account:
    id: str
    username: str
    role: str


def reset_database(settings: Settings) -> None:
    """Empty the PostgreSQL database of an earlier test. In a thread of its own: while the module's
    browser is open, Playwright's loop counts as running in this thread, and asyncio.run refuses."""
    if settings.is_sqlite:
        return
    errors: list[BaseException] = []

    def reset() -> None:
        try:
            asyncio.run(_reset_postgres(settings))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=reset)
    worker.start()
    worker.join(timeout=30)
    if errors:
        raise errors[0]


@pytest.fixture
def live_server(backend: Backend, tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(backend, tmp_path)
    reset_database(settings)
    server = LiveServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(backend: Backend) -> Iterator[Any]:
    """One headless Chromium per module and backend: starting it costs seconds. While Playwright's
    synchronous API is alive its event loop counts as this thread's running loop, so nothing else here
    may call asyncio.run: hence not for the whole session (the asyncio tests of other modules could not
    start), and dependent on `backend`, so that it closes before the next backend is set up (that
    fixture creates and drops its PostgreSQL database with asyncio.run)."""
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing (CI=true: a missing browser is a failure)")
        pytest.skip(f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page of its own browser context (so nothing is shared between tabs), and the JavaScript
    errors it has raised: uncaught exceptions and console errors."""

    page: Any
    url: str
    errors: list[str] = field(default_factory=list)

    def open(self) -> None:
        self.page.goto(f"{self.url}/admin")

    def sign_in(self, account: Account, password: str = PASSWORD) -> None:
        self.page.fill("#login-username", account.username)
        self.page.fill("#login-password", password)
        self.page.click("#login-submit")

    def screenshot(self, path: Path) -> None:
        self.page.mouse.move(0, 0)  # no hover effect left where the last click was
        self.page.screenshot(path=str(path), full_page=True)


@contextmanager
def new_tab(browser: Any, url: str, **options: Any) -> Iterator[Tab]:
    """A tab of a browser context of its own (viewport WIDE unless `options` say otherwise; a
    `timezone_id` sets the zone the page writes local times in)."""
    context = browser.new_context(**{"viewport": WIDE, **options})
    context.set_default_timeout(10_000)
    page = context.new_page()
    opened = Tab(page, url)

    def on_console(message: Any) -> None:
        if message.type == "error":
            opened.errors.append(f"console: {message.text}")

    page.on("pageerror", lambda error: opened.errors.append(f"pageerror: {error}"))
    page.on("console", on_console)
    try:
        yield opened
    finally:
        # Closed before the server stops, so its event stream ends with the page.
        context.close()


@pytest.fixture
def tab(browser: Any, live_server: LiveServer) -> Iterator[Tab]:
    with new_tab(browser, live_server.url) as opened:
        yield opened


# --- what several test modules do -------------------------------------------------------------


def provision(server: LiveServer, headers: dict[str, str], name: str) -> dict[str, str]:
    response = httpx.post(f"{server.url}/v1/admin/devices", json={"model": "plug-2", "name": name}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["devices"][0]  # type: ignore[no-any-return]


def connect_device(server: LiveServer, device: dict[str, str]) -> paho.Client:
    """The device online over MQTT with a device token, as its firmware would be."""
    response = httpx.post(f"{server.url}/v1/devices/token", json={"uid": device["uid"], "secret": device["secret"]})
    assert response.status_code == 200, response.text
    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device["uid"], protocol=paho.MQTTv311)
    client.username_pw_set(device["uid"], response.json()["access_token"])
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", server.settings.mqtt_port, keepalive=30)
    client.loop_start()
    assert connected.wait(10), "the device did not connect"
    return client


def signed_in(tab: Tab, account: Account) -> None:
    tab.open()
    tab.sign_in(account)
    expect(tab.page.locator("#dashboard-view")).to_be_visible()
    expect(tab.page.locator("#live-status")).to_have_text("live")
