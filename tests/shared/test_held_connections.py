"""Held-open connections (issue 17): silent, half-header and trickling HTTP connections used to stay
open for good, and 20,600 of them exhausted the process's file limit, so that `/healthz` and MQTT
CONNECT failed until they were let go. `handshake serve` closes a connection that has not sent a
whole request head within HEADER_TIMEOUT, and keeps HTTP connections to a share of the file limit, so
the rest stays for MQTT and the database.

The server runs as `handshake serve` under a file limit of 600, as a small container might have."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.http_guard import HEADER_TIMEOUT
from shared.testing import free_port
from tests.device_connector.helpers import Mqtt
from tests.shared.test_cli import HANDSHAKE, START_TIMEOUT, make_env

FILE_LIMIT = 600
ADMIN_PASSWORD = "held open but not for long"


class Served:
    def __init__(self, workdir: Path) -> None:
        self.http_port, self.mqtt_port = free_port(), free_port()
        self.err = workdir / "serve.err"
        env = make_env(workdir, HANDSHAKE_ADMIN_PASSWORD=ADMIN_PASSWORD)
        with self.err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [*HANDSHAKE, "serve", "--http-port", str(self.http_port), "--mqtt-port", str(self.mqtt_port)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT)),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"`handshake serve` did not start: {self.err.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=3).status_code == 200
        except httpx.TransportError:
            return False

    def open_raw(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.http_port), timeout=5)
        sock.settimeout(0.5)
        return sock

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("held"))
    try:
        yield server
    finally:
        server.stop()


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed


def test_silent_and_half_header_connections_are_closed(served: Served) -> None:
    silent = served.open_raw()
    half = served.open_raw()
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    trickling = served.open_raw()
    trickling.sendall(b"GET /healthz HTTP/1.1\r\n")
    deadline = time.monotonic() + HEADER_TIMEOUT + 5
    open_ones = {"silent": silent, "half a head": half, "trickling": trickling}
    while open_ones and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            trickling.sendall(b"X")  # a byte now and then never buys more time
        for name, sock in list(open_ones.items()):
            if closed_by_server(sock):
                del open_ones[name]
    for sock in (silent, half, trickling):
        sock.close()
    assert not open_ones, f"still open after {HEADER_TIMEOUT + 5:.0f} s: {sorted(open_ones)}"


def test_a_kept_alive_connection_still_serves_requests(served: Served) -> None:
    with httpx.Client(base_url=served.url) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(1)


def test_a_flood_of_held_connections_leaves_http_and_mqtt_working(served: Served) -> None:
    """More connections than the server's whole file limit, all held open and silent."""
    held: list[socket.socket] = []
    try:
        for _ in range(FILE_LIMIT + 100):
            with contextlib.suppress(OSError):
                held.append(served.open_raw())
        time.sleep(0.5)
        assert served.healthy(), "/healthz failed while connections were held open"
        login = httpx.post(f"{served.url}/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert login.status_code == 200, login.text
        user_id = httpx.get(
            f"{served.url}/v1/users/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"}
        ).json()["id"]
        mqtt = Mqtt(served.mqtt_port, user_id, user_id, login.json()["access_token"])
        try:
            assert asyncio.run(mqtt.connect()) == 0, "MQTT CONNECT failed while HTTP connections were held open"
        finally:
            asyncio.run(mqtt.close())
        alive = sum(not closed_by_server(sock) for sock in held[-50:])
        assert alive > 0, "the newest held connections were all closed at once"
    finally:
        for sock in held:
            sock.close()
    assert served.proc.poll() is None, served.err.read_text()[-3000:]
