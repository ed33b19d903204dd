"""The live activity stream the dashboard reads (SPEC §4 `GET /v1/admin/events/stream`, §7): for admin and
support only, resumable with Last-Event-ID, and fed by every process of a deployment (with Redis, an event
recorded by one service process reaches the streams of the others)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.context import Context
from shared.testing import free_port
from tests.conftest import Backend, Users, bearer
from tests.dashboard.conftest import LiveServer
from tests.device_manager import assert_error

STREAM = "/v1/admin/events/stream"
Event = dict[str, Any]


class Stream:
    """An open event stream, read frame by frame."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        self.lines = response.aiter_lines()

    async def opened(self) -> None:
        """Wait for the server's first frame (`retry:`): from then on it is listening for new events."""
        async with asyncio.timeout(5):
            async for line in self.lines:
                if line.startswith("retry:"):
                    return

    async def until(self, wanted: Callable[[Event], bool], timeout: float = 5.0) -> list[Event]:  # noqa: ASYNC109 - past it, fails with the events seen
        """The events up to the first one `wanted`; fails after `timeout` seconds."""
        seen: list[Event] = []
        data: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                async for line in self.lines:
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif line == "" and data:
                        event = json.loads("\n".join(data))
                        data = []
                        seen.append(event)
                        if wanted(event):
                            return seen
        except TimeoutError:
            pass
        pytest.fail(f"not on the stream within {timeout} s; seen: {[(e['id'], e['type']) for e in seen]}")


def failed_login(url: str, username: str) -> None:
    response = httpx.post(f"{url}/v1/auth/login", json={"username": username, "password": "not the password"})
    assert response.status_code == 401, response.text


def is_failure_of(username: str) -> Callable[[Event], bool]:
    return lambda event: event["type"] == "login_failed" and event["detail"].get("username") == username


# --- who may read it -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["user", "manufacturer"])
async def test_stream_refuses_other_roles(client: httpx.AsyncClient, users: Users, ctx: Context, role: str) -> None:
    _, tokens = await users.admin(ctx, role)
    assert_error(await client.get(STREAM, headers=bearer(tokens)), 403, "forbidden")


async def test_stream_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get(STREAM)
    assert_error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_stream_refuses_a_token_of_a_disabled_user(live_server: LiveServer) -> None:
    admin = live_server.login(live_server.staff("admin"))
    support = live_server.staff("support")
    support_headers = live_server.login(support)
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        patch = await http.patch(f"/v1/admin/users/{support.id}", json={"disabled": True}, headers=admin)
        assert patch.status_code == 200, patch.text
        assert_error(await http.get(STREAM, headers=support_headers), 401, "invalid_token")


# --- what it delivers ----------------------------------------------------------------------------


async def test_support_reads_live_events_as_they_happen(live_server: LiveServer) -> None:
    support = live_server.login(live_server.staff("support"))
    name = f"mallory{secrets.token_hex(3)}"
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        async with http.stream("GET", STREAM, headers=support) as response:
            stream = Stream(response)
            await stream.opened()
            await asyncio.to_thread(failed_login, live_server.url, name)
            seen = await stream.until(is_failure_of(name))
    assert seen[-1]["actor_id"] is None  # no such user: nobody to name


async def test_stream_replays_what_was_missed_after_last_event_id(live_server: LiveServer) -> None:
    admin = live_server.login(live_server.staff("admin"))
    name = f"missed{secrets.token_hex(3)}"
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        newest = (await http.get("/v1/admin/events", params={"limit": 1}, headers=admin)).json()[0]["id"]
        await asyncio.to_thread(failed_login, live_server.url, name)  # while nobody is listening
        headers = {**admin, "Last-Event-ID": str(newest)}
        async with http.stream("GET", STREAM, params={"type": "login_failed"}, headers=headers) as response:
            seen = await Stream(response).until(is_failure_of(name))
    assert all(event["type"] == "login_failed" and event["id"] > newest for event in seen)


async def ended_within(stream: Stream, seconds: float) -> bool:
    """Whether the server ends the stream within `seconds` (reading whatever it still sends)."""
    try:
        async with asyncio.timeout(seconds):
            async for _ in stream.lines:
                pass
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("how", ["logout", "disable", "demote"])
async def test_stream_ends_within_seconds_of_its_reader_losing_the_right(live_server: LiveServer, how: str) -> None:
    """SPEC §4/§11: a revoked session is refused everywhere at once; a live stream is no exception (it
    kept delivering 9 s after a logout when revocation was checked only at the 15 s keep-alive)."""
    admin = live_server.login(live_server.staff("admin"))
    reader = live_server.staff("support")
    headers = live_server.login(reader)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        async with http.stream("GET", STREAM, headers=headers) as response:
            stream = Stream(response)
            await stream.opened()
            if how == "logout":
                done = await http.post("/v1/auth/logout", headers=headers)
            elif how == "disable":
                done = await http.patch(f"/v1/admin/users/{reader.id}", json={"disabled": True}, headers=admin)
            else:
                done = await http.patch(f"/v1/admin/users/{reader.id}", json={"role": "user"}, headers=admin)
            assert done.status_code in (200, 204), done.text

            # Events keep coming (a stream that delivers stays open as long as a quiet one).
            def make_noise() -> None:
                for n in range(8):
                    failed_login(live_server.url, f"noise{n}")

            noise = asyncio.ensure_future(asyncio.to_thread(make_noise))
            try:
                assert await ended_within(stream, 5.0), f"the stream outlived its reader's {how} by 5 s"
            finally:
                await noise


# --- across processes ----------------------------------------------------------------------------


@pytest.fixture
def other_process(live_server: LiveServer, backend: Backend, tmp_path: Path) -> Iterator[str]:
    """A second account manager, a process of its own (`handshake serve --service account-manager`), on the
    same PostgreSQL database and the same Redis prefix as `live_server`: one deployment, two processes."""
    if not backend.uses_redis:
        pytest.skip("events cross processes through Redis; the SQLite deployment is one process")
    settings = live_server.settings
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("HANDSHAKE_")}
    env.update(
        HANDSHAKE_DATABASE_URL=settings.database_url,
        HANDSHAKE_REDIS_URL=settings.redis_url or "",
        HANDSHAKE_REDIS_PREFIX=settings.redis_prefix,
        HANDSHAKE_KEYS_DIR=str(settings.keys_dir),
        HANDSHAKE_ISSUER=settings.issuer,
        HANDSHAKE_ADMIN_PASSWORD=secrets.token_urlsafe(18),
        HANDSHAKE_ARGON2_TIME_COST="1",
        HANDSHAKE_ARGON2_MEMORY_KIB="1024",
    )
    args = [sys.executable, "-m", "shared.cli", "serve", "--service", "account-manager"]
    args += ["--host", "127.0.0.1", "--http-port", str(port)]
    log_path = tmp_path / "other-process.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(process, url, log_path)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the second process exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the second process was not ready within 30 s:\n{log_path.read_text()}")


async def test_stream_delivers_events_recorded_by_another_process(live_server: LiveServer, other_process: str) -> None:
    admin = live_server.login(live_server.staff("admin"))
    name = f"elsewhere{secrets.token_hex(3)}"
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as http:
        async with http.stream("GET", STREAM, params={"type": "login_failed"}, headers=admin) as response:
            stream = Stream(response)
            await stream.opened()
            started = time.monotonic()
            await asyncio.to_thread(failed_login, other_process, name)
            seen = await stream.until(is_failure_of(name))
    assert time.monotonic() - started < 5
    assert seen[-1]["ip"] == "127.0.0.1"
