"""End to end: a real `handshake serve` and the example partner service (examples/partner_service.py),
each in its own process. The partner knows nothing of our database: it verifies exchanged tokens
from the JWKS URL alone."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from shared.testing import forge, free_port

REPO = Path(__file__).resolve().parents[2]
PARTNER = "partner.example"
READY_TIMEOUT = 30.0
JWKS_LINE = '"GET /.well-known/jwks.json'


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _clean_env(**values: str) -> dict[str, str]:
    # Nothing from the caller's HANDSHAKE_* environment (or a HANDSHAKE_CONFIG file) leaks in.
    env = {name: value for name, value in os.environ.items() if not name.startswith("HANDSHAKE_")}
    env.update(values)
    return env


def _start(args: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, port: int) -> Process:
    log_file = log_path.open("wb")
    # stdout and stderr into one file: uvicorn writes its access log to stdout, the rest to stderr,
    # and a file (unlike a pipe) never fills up and blocks the server.
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
    process = Process(proc, log_path, log_file, f"http://127.0.0.1:{port}")
    try:
        _wait_ready(process)
    except BaseException:
        _stop(process)
        raise
    return process


def _wait_ready(process: Process) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            pytest.fail(f"{process.url} exited with {process.proc.returncode}:\n{process.log()}")
        try:
            if httpx.get(f"{process.url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{process.url} not ready within {READY_TIMEOUT} s:\n{process.log()}")


def _stop(process: Process) -> None:
    try:
        process.proc.terminate()
        try:
            process.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.proc.kill()
            process.proc.wait(timeout=10)
    finally:
        process.log_file.close()


@dataclass
class Handshake:
    process: Process
    keys_dir: Path
    admin_password: str

    @property
    def url(self) -> str:
        return self.process.url

    def jwks_fetches(self) -> int:
        return sum(JWKS_LINE in line for line in self.process.log().splitlines())


@pytest.fixture(scope="module")
def handshake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Handshake]:
    tmp = tmp_path_factory.mktemp("handshake")
    port = free_port()
    password = f"admin-{secrets.token_urlsafe(18)}"
    env = _clean_env(
        HANDSHAKE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'h.db'}",
        HANDSHAKE_KEYS_DIR=str(tmp / "keys"),
        HANDSHAKE_ADMIN_PASSWORD=password,
        # A JSON list: the plain "partner.example" form fails to parse (see the report on settings).
        HANDSHAKE_PARTNER_AUDIENCES=f'["{PARTNER}"]',
        HANDSHAKE_ISSUER=f"http://127.0.0.1:{port}",
        HANDSHAKE_ACCESS_LOG="true",  # jwks_fetches() counts its lines (off by default)
        HANDSHAKE_MFA_REQUIRED_ROLES="[]",  # its admin signs in with the password alone, as in tests/conftest.py
    )
    # An MQTT port of its own too: once the device connector is installed, serve starts its broker.
    args = [sys.executable, "-m", "shared.cli", "serve", "--http-port", str(port), "--mqtt-port", str(free_port())]
    process = _start(args, env=env, cwd=tmp, log_path=tmp / "handshake.log", port=port)
    try:
        yield Handshake(process, tmp / "keys", password)
    finally:
        _stop(process)


def _start_partner(handshake: Handshake, tmp: Path) -> Process:
    port = free_port()
    env = _clean_env(HANDSHAKE_URL=handshake.url, PARTNER_AUDIENCE=PARTNER, HANDSHAKE_ISSUER=handshake.url)
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "examples.partner_service:create_app",
        "--app-dir",
        str(REPO),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return _start(args, env=env, cwd=tmp, log_path=tmp / "partner.log", port=port)


@pytest.fixture(scope="module")
def partner(handshake: Handshake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = _start_partner(handshake, tmp_path_factory.mktemp("partner"))
    try:
        yield process.url
    finally:
        _stop(process)


@pytest.fixture
def fresh_partner(handshake: Handshake, tmp_path: Path) -> Iterator[str]:
    """A partner process of its own, which starts with an empty key set."""
    process = _start_partner(handshake, tmp_path)
    try:
        yield process.url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def admin_token(handshake: Handshake) -> str:
    response = httpx.post(
        f"{handshake.url}/v1/auth/login", json={"username": "admin", "password": handshake.admin_password}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _hello(partner: str, token: str) -> httpx.Response:
    return httpx.get(f"{partner}/partner/hello", headers={"Authorization": f"Bearer {token}"})


def test_exchanged_token_is_accepted_with_its_sub_and_nonce(
    handshake: Handshake, partner: str, admin_token: str
) -> None:
    exchanged = httpx.post(
        f"{handshake.url}/v1/auth/exchange",
        json={"audience": PARTNER, "nonce": "abc"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert exchanged.status_code == 200, exchanged.text
    me = httpx.get(f"{handshake.url}/v1/users/me", headers={"Authorization": f"Bearer {admin_token}"}).json()

    response = _hello(partner, exchanged.json()["access_token"])

    assert response.status_code == 200, response.text
    assert response.json()["sub"] == me["id"]
    assert response.json()["nonce"] == "abc"


def test_plain_access_token_is_refused_by_the_partner(partner: str, admin_token: str) -> None:
    response = _hello(partner, admin_token)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert set(response.json()) == {"error", "detail"}
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("header", ["Bearer garbage", "Bearer a.b.c", "Basic YWRtaW46YWRtaW4=", None])
def test_garbage_or_missing_token_is_refused_by_the_partner(partner: str, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}

    response = httpx.get(f"{partner}/partner/hello", headers=headers)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


async def test_unknown_kids_do_not_make_the_partner_storm_the_jwks(handshake: Handshake, fresh_partner: str) -> None:
    before = handshake.jwks_fetches()
    tokens = [
        forge(
            handshake.keys_dir,
            headers={"kid": secrets.token_urlsafe(16)},
            claims={"nonce": "abc"},
            issuer=handshake.url,
            audience=PARTNER,
        )
        for _ in range(20)
    ]

    async with httpx.AsyncClient(base_url=fresh_partner) as client:
        responses = await asyncio.gather(
            *(client.get("/partner/hello", headers={"Authorization": f"Bearer {token}"}) for token in tokens)
        )

    assert [r.status_code for r in responses] == [401] * 20
    fetches = handshake.jwks_fetches() - before
    # At least one: the access log is really being counted. At most two: the first key set, and one
    # re-fetch for an unknown kid; the other 19 kids wait for the re-fetch interval (30 s).
    assert 1 <= fetches <= 2, handshake.process.log()
