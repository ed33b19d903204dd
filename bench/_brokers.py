"""Benchmark helper: the brokers the MQTT benchmarks compare. Ours is the real platform (`handshake serve` in a
subprocess, its embedded broker on a free port); the baseline is bare amqtt (bench/_mqtt_baseline.py); the
reference is the machine's Mosquitto on 127.0.0.1:1883 when there is one. A `Target` is one of them as the
clients see it."""

from __future__ import annotations

import contextlib
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench._proc import (
    CHILDREN,
    HOST,
    STARTUP_TIMEOUT,
    Child,
    clean_env,
    log_problems,
    print_log_summary,
    settle,
    stop_children,
    wait_port,
)
from bench._server import _backend_env
from shared.testing import free_port

MOSQUITTO_PORT = 1883


@dataclass
class Platform:
    child: Child
    base_url: str
    mqtt_port: int
    admin_password: str
    not_ready: list[float] = field(default_factory=list)  # seconds spent waiting for /readyz mid-run

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Before each of our runs: if the platform says it is not ready (revocation view stale: every
        CONNECT gets "server unavailable"), wait for it and record how long."""
        if self.ready():
            return
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout and not self.ready():
            self.child.check_alive()
            time.sleep(0.2)
        self.not_ready.append(time.monotonic() - t0)


def start_platform(workdir: Path, backend_env: dict[str, str]) -> Platform:
    """`handshake serve` on free HTTP and MQTT ports, with a random admin password; ready when it returns."""
    http_port, mqtt_port = free_port(), free_port()
    base_url = f"http://{HOST}:{http_port}"
    admin_password = secrets.token_urlsafe(16)
    env = {
        **clean_env(),
        **backend_env,
        "HANDSHAKE_ADMIN_PASSWORD": admin_password,
        "HANDSHAKE_ISSUER": base_url,
        "HANDSHAKE_MFA_REQUIRED_ROLES": "[]",  # the admin signs in with the password alone (not measured here)
    }
    command = [
        sys.executable, "-m", "shared.cli", "serve",
        "--host", HOST, "--http-port", str(http_port), "--mqtt-port", str(mqtt_port),
    ]  # fmt: skip
    child = Child("handshake serve", command, env, workdir / "platform.log")
    platform = Platform(child, base_url, mqtt_port, admin_password)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    # /readyz: database reachable and the revocation view confirmed (else CONNACK 3).
    while not platform.ready():
        child.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the platform was not ready in {STARTUP_TIMEOUT:.0f} s:\n{child.log_tail()}")
        time.sleep(0.1)
    wait_port(mqtt_port, child)
    return platform


@contextlib.contextmanager
def serving(backend: str, name: str, **env: str) -> Iterator[tuple[Platform, dict[str, str], Path]]:
    """The platform on `backend` (plus `env`, HANDSHAKE_* variables) in a temporary directory: it, its
    environment and that directory. On the way out every child is stopped and its log summarised, and the
    backend's storage removed."""
    with tempfile.TemporaryDirectory(prefix=f"handshake-bench-{name}-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        platform_env = {**stack.enter_context(_backend_env(backend, workdir)), **env}
        try:
            yield start_platform(workdir, platform_env), platform_env, workdir
        finally:
            stop_children()
            for child in CHILDREN:
                print_log_summary(child.name, log_problems(child.log_path))


def start_amqtt(workdir: Path) -> tuple[Child, int]:
    port = free_port()
    command = [sys.executable, "-m", "bench._mqtt_baseline", "--port", str(port)]
    child = Child("bare amqtt", command, clean_env(), workdir / "amqtt.log")
    wait_port(port, child)
    return child, port


def mosquitto_pid() -> int | None:
    """The local Mosquitto's pid, for its CPU time (it serves others too: a reference only)."""
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{MOSQUITTO_PORT}"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    for part in out.stdout.split("pid=")[1:]:
        digits = part.split(",", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


def mosquitto_up() -> bool:
    try:
        with socket.create_connection((HOST, MOSQUITTO_PORT), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Target:
    """One broker as the clients see it: where it is, its process (for CPU), and who connects how."""

    name: str
    port: int
    pid: int | None
    platform: Platform | None = None  # ours: waited for (/readyz) before each run
    prefix: str = ""  # client ids and topics on the shared Mosquitto are prefixed, so nobody collides
    with_credentials: bool = True

    def cid(self, client_id: str) -> str:
        return self.prefix + client_id

    def topic(self, topic: str) -> str:
        return self.prefix + topic

    def creds(self, username: str, password: str) -> tuple[str | None, str | None]:
        return (username, password) if self.with_credentials else (None, None)

    def prepare(self, pids: Sequence[int | None]) -> None:
        settle(pids)
        if self.platform is not None:
            self.platform.wait_ready()


def mosquitto_target() -> Target | None:
    """The local Mosquitto, anonymous, under a prefix of its own; None (and a note) when none listens."""
    if not mosquitto_up():
        print(f"(no Mosquitto on {HOST}:{MOSQUITTO_PORT}: its reference figures are left out)")
        return None
    prefix = f"hsbench{random.randrange(10**6)}-"
    return Target("mosquitto", MOSQUITTO_PORT, mosquitto_pid(), prefix=prefix, with_credentials=False)
