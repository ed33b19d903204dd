"""`handshake demo` against a real running server: every step printed, exit code 0."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.testing import free_port


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
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "demo",
                "--url",
                f"http://127.0.0.1:{http_port}",
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
