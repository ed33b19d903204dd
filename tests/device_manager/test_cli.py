"""`handshake devices provision` (SPEC §9): a factory's batch of devices written to a CSV that only its
owner may read, and the devices in it are real (each secret buys a device token through the API)."""

from __future__ import annotations

import csv
import os
import re
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from shared.app import create_app
from shared.settings import Settings

HANDSHAKE = Path(sys.executable).with_name("handshake")
UID = re.compile(r"[A-Z0-9]{20}")


def env_for(tmp_path: Path) -> dict[str, str]:
    # The test's own settings only: no HANDSHAKE_* from the shell that runs the suite.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDSHAKE_")}
    env["HANDSHAKE_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'handshake.db'}"
    env["HANDSHAKE_KEYS_DIR"] = str(tmp_path / "keys")
    return env


def handshake(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HANDSHAKE), *args], env=env_for(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


@asynccontextmanager
async def api_over(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API over the database and keys the command line wrote."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'handshake.db'}",
        keys_dir=tmp_path / "keys",
        issuer="http://testserver",
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
    # The two services these tests talk to; no broker.
    app = create_app(settings, services=("account-manager", "device-manager"), migrate=True)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["uid", "secret", "claim_code"]
        return list(reader)


async def test_provision_writes_a_0600_csv_of_working_devices(tmp_path: Path) -> None:
    out = tmp_path / "devices.csv"
    done = handshake(tmp_path, "devices", "provision", "--model", "lamp-1", "--count", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = read_csv(out)
    assert len(rows) == 5
    assert len({row["uid"] for row in rows}) == 5
    for row in rows:
        assert UID.fullmatch(row["uid"]), row
        assert row["secret"] and row["claim_code"]
    # The secrets are not printed anywhere else.
    for row in rows:
        assert row["secret"] not in done.stdout + done.stderr


async def test_provisioned_devices_get_tokens_and_bind(tmp_path: Path) -> None:
    out = tmp_path / "devices.csv"
    done = handshake(tmp_path, "devices", "provision", "--model", "lamp-1", "--count", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    first, second = read_csv(out)
    async with api_over(tmp_path) as client:
        token = await client.post("/v1/devices/token", json={"uid": first["uid"], "secret": first["secret"]})
        assert token.status_code == 200, token.text
        await client.post("/v1/auth/register", json={"username": "buyer", "password": "correct horse battery"})
        login = await client.post("/v1/auth/login", json={"username": "buyer", "password": "correct horse battery"})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        bound = await client.post(
            "/v1/devices/bind", json={"uid": second["uid"], "claim_code": second["claim_code"]}, headers=headers
        )
        assert bound.status_code == 201, bound.text
        device = await client.get(f"/v1/devices/{second['uid']}", headers=headers)
        assert device.json()["model"] == "lamp-1"


async def test_provision_to_an_existing_file_is_exit_2_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "devices.csv"
    out.write_text("already here\n")
    done = handshake(tmp_path, "devices", "provision", "--model", "lamp-1", "--count", "3", "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(out) in done.stderr
    assert out.read_text() == "already here\n"


async def test_provision_without_out_prints_the_csv(tmp_path: Path) -> None:
    done = handshake(tmp_path, "devices", "provision", "--model", "lamp-1", "--count", "2")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert len(rows) == 2
    assert all(UID.fullmatch(row["uid"]) for row in rows)
