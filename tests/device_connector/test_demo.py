"""`handshake demo` against a real running server: every step printed, exit code 0."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from shared.testing import free_port
from tests.conftest import Backend, _reset_postgres
from tests.shared.test_cli import HANDSHAKE, Server, launch_server, make_env

ADMIN_PASSWORD = "demo admin password 42"


def test_demo_walks_the_whole_flow(tmp_path: Path) -> None:
    http_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDSHAKE_")}
    env.update(
        HANDSHAKE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/h.db",
        HANDSHAKE_KEYS_DIR=str(tmp_path / "keys"),
        HANDSHAKE_ADMIN_PASSWORD="demo admin password 42",
        HANDSHAKE_ARGON2_TIME_COST="1",
        HANDSHAKE_ARGON2_MEMORY_KIB="1024",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--http-port", str(http_port), "--mqtt-port", str(mqtt_port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        # The default requires a second factor of admins: without one the demo says so in one line;
        # the operator gives `admin` one on the command line, and the demo signs in with a code.
        refused = subprocess.run(
            [sys.executable, "-m", "shared.cli", "demo", "--url", f"http://127.0.0.1:{http_port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "mfa_enrolment_required" in refused.stderr and "handshake mfa enrol" in refused.stderr
        enrolled = subprocess.run(
            [sys.executable, "-m", "shared.cli", "mfa", "enrol", "admin"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert enrolled.returncode == 0, enrolled.stderr
        (secret,) = re.findall(r"^secret: ([A-Z2-7]+)$", enrolled.stdout, re.M)
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "demo",
                "--url",
                f"http://127.0.0.1:{http_port}",
                "--admin-totp-secret",
                secret,
                # No --mqtt-port: demo asks the server, and 1883 here is the machine's Mosquitto.
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    assert demo.returncode == 0, demo.stdout + demo.stderr
    steps = [line for line in demo.stdout.splitlines() if line.startswith("[")]
    assert len(steps) == 10, demo.stdout
    assert "'status': 'ok'" in steps[5]
    assert "{'on': True}" in steps[6]
    assert "{'brightness': 80}" in steps[7]
    assert "online=True" in steps[8] and "online=False" in steps[9]
    assert f"on port {mqtt_port}" in steps[4], steps[4]


def test_demo_without_a_server_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDSHAKE_")}
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "demo",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--admin-password",
            "x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert demo.returncode == 2
    assert demo.stderr.count("\n") == 1 and demo.stderr.startswith("handshake:"), demo.stderr


@pytest.fixture
def separate_services(backend: Backend, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The three services as processes of their own (`serve --service NAME`) on one PostgreSQL, Redis
    and key directory, each on its own port: what docker-compose.yml runs."""
    if backend.database_url is None:
        pytest.skip("separate services share state through PostgreSQL and Redis")
    asyncio.run(_reset_postgres(Settings(database_url=backend.database_url, keys_dir=tmp_path / "keys")))
    env = make_env(
        tmp_path,
        HANDSHAKE_DATABASE_URL=backend.database_url,
        HANDSHAKE_REDIS_URL=backend.redis_url or "",
        HANDSHAKE_REDIS_PREFIX=f"hs-demo-{secrets.token_hex(4)}:",
        HANDSHAKE_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    urls: dict[str, str] = {}
    running: list[Server] = []
    try:
        # The account manager first: it makes the key ring the others verify with.
        for name in ("account-manager", "device-manager", "device-connector"):
            running.append(launch_server(tmp_path, env, name, "--service", name))
            running[-1].wait_ready()
            urls[name] = running[-1].base_url
        yield urls
    finally:
        for server in running:
            server.stop()


def test_demo_walks_the_whole_flow_across_separate_services(separate_services: dict[str, str]) -> None:
    urls = separate_services
    demo = subprocess.run(
        [
            *HANDSHAKE,
            "demo",
            "--url",
            urls["account-manager"],
            "--device-manager-url",
            urls["device-manager"],
            "--device-connector-url",
            urls["device-connector"],
            "--admin-password",
            ADMIN_PASSWORD,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    steps = [line for line in demo.stdout.splitlines() if line.startswith("[")]
    assert len(steps) == 10, demo.stdout
    assert "'status': 'ok'" in steps[5] and "{'brightness': 80}" in steps[7], demo.stdout
    assert "online=True" in steps[8] and "online=False" in steps[9], demo.stdout


def test_demo_given_only_the_account_manager_says_what_is_missing(separate_services: dict[str, str]) -> None:
    """The account manager serves no device routes: one line naming the answer, not a KeyError."""
    demo = subprocess.run(
        [*HANDSHAKE, "demo", "--url", separate_services["account-manager"], "--admin-password", ADMIN_PASSWORD],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert "Traceback" not in demo.stderr and "KeyError" not in demo.stderr, demo.stderr
    assert demo.stderr.count("\n") == 1 and "404" in demo.stderr, demo.stderr
    assert "--device-manager-url" in demo.stderr, demo.stderr
