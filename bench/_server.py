"""Benchmark helper: a real uvicorn (uvloop, httptools, 1 worker) in a subprocess on a free 127.0.0.1
port, serving the product app plus three benchmark-only routes that live here, never in product code:

- GET /bench/plain   the trivial baseline: small JSON, no authentication;
- GET /bench/auth    the same behind `CurrentUser` (verify + revocation check), what PERF §2 targets;
- GET /bench/pyjwt   the naive approach PERF §2 measured at 0.37×: plain `jwt.decode` on every request.

Settings reach the subprocess through HANDSHAKE_* environment variables (Settings() reads them), so the
server is built exactly the way `uvicorn --factory` builds any app. Backends: "sqlite" (a temporary
database file) or "postgres" (a fresh database, created here and dropped afterwards, plus Redis under a
unique key prefix that is deleted afterwards)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench._proc import REPO, STARTUP_TIMEOUT, clean_env, stop_process
from shared.app import create_app
from shared.deps import CurrentUser
from shared.keys import KeyDirectory
from shared.settings import Settings
from shared.testing import free_port

PG_ADMIN_DSN = os.environ.get("HANDSHAKE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HANDSHAKE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
BACKENDS = ("sqlite", "postgres")


# --- the served app (runs inside the uvicorn subprocess) ------------------------------------------


def app_factory() -> FastAPI:
    """`uvicorn --factory bench._server:app_factory`: the product app plus the benchmark routes."""
    settings = Settings()
    app = create_app(settings, migrate=True)
    _add_bench_routes(app, settings)
    return app


def _verification_key(settings: Settings) -> Any:
    # Context.build would create the key on first start anyway; doing it here first lets the naive
    # route hold a ready public key object (the most favourable form for PyJWT: no PEM parsing).
    directory = KeyDirectory(settings.keys_dir)
    directory.ensure(settings.jwt_alg)
    active = [key for key in directory.load() if key.retired_at is None and key.alg == settings.jwt_alg]
    return max(active, key=lambda key: key.created_at).public


def _add_bench_routes(app: FastAPI, settings: Settings) -> None:
    public_key = _verification_key(settings)
    algorithms = [settings.jwt_alg]

    @app.post("/bench/seed-devices", include_in_schema=False)
    async def bench_seed_devices(request: Request, user: CurrentUser) -> dict[str, int]:
        """Provision and bind `count` devices to the caller (bench.http's GET /v1/devices)."""
        from device_manager import binding, provisioning

        ctx = request.state.ctx
        count = int(request.query_params.get("count", "20"))
        made = await provisioning.provision(ctx, model="bench-plug", count=count, actor_id=None, ip=None)
        for device in made:
            await binding.bind(ctx, uid=device.uid, claim_code=device.claim_code, user_id=user.id, ip=None)
        return {"bound": len(made)}

    @app.get("/bench/plain", include_in_schema=False)
    async def bench_plain() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/bench/auth", include_in_schema=False)
    async def bench_auth(user: CurrentUser) -> dict[str, bool]:
        return {"ok": True}

    @app.get("/bench/pyjwt", include_in_schema=False, response_model=None)
    async def bench_pyjwt(request: Request) -> dict[str, bool] | JSONResponse:
        # The naive approach: a full PyJWT decode per request, no cache, no revocation check.
        _, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            jwt.decode(
                token.strip(),
                public_key,
                algorithms=algorithms,
                audience=settings.audience,
                issuer=settings.issuer,
            )
        except jwt.PyJWTError:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return {"ok": True}


# --- the parent side: start, wait, stop -----------------------------------------------------------


@dataclass(frozen=True)
class Server:
    backend: str
    base_url: str
    pid: int


async def _pg_execute(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _drop_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def _backend_env(backend: str, workdir: Path) -> Iterator[dict[str, str]]:
    """The HANDSHAKE_* variables of one backend; creates and drops what it needs."""
    env = {"HANDSHAKE_KEYS_DIR": str(workdir / "keys")}
    if backend == "sqlite":
        env["HANDSHAKE_DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir / 'handshake.db'}"
        yield env
        return
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    name = f"handshake_bench_{secrets.token_hex(4)}"
    prefix = f"hs-bench-{secrets.token_hex(4)}:"
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    try:
        env["HANDSHAKE_DATABASE_URL"] = f"{base}/{name}"
        env["HANDSHAKE_REDIS_URL"] = REDIS_URL
        env["HANDSHAKE_REDIS_PREFIX"] = prefix
        yield env
    finally:
        try:
            asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            _drop_redis_prefix(prefix)


def _uvicorn_command(port: int) -> list[str]:
    # One worker is uvicorn's default; --workers is left out so uvicorn runs the server in this very
    # process instead of under its multiprocess supervisor.
    return [
        sys.executable, "-m", "uvicorn", "--factory", "bench._server:app_factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools",
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    # /healthz answers only once the lifespan (migrations, revocation view) has started.
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not become healthy in {STARTUP_TIMEOUT:.0f} s:\n{log_path.read_text()[-4000:]}")


@contextmanager
def uvicorn(port: int, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """app_factory() served on `port` in a subprocess with `env`, healthy when this yields; stopped on exit."""
    # Server output goes to a file, never a pipe nobody reads (a full pipe would stall it).
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(_uvicorn_command(port), cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(process, f"http://127.0.0.1:{port}", log_path)
            yield process
        finally:
            stop_process(process)  # SIGTERM: uvicorn runs the lifespan shutdown


@contextmanager
def running_server(backend: str) -> Iterator[Server]:
    """A uvicorn serving app_factory() on `backend`, stopped (and its storage removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="handshake-bench-") as tmp:
        workdir = Path(tmp)
        with _backend_env(backend, workdir) as backend_env:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            env = {**clean_env(), **backend_env, "HANDSHAKE_ISSUER": base_url}
            # The benchmarks' admins sign in with the password alone: the second factor is not on the
            # paths they measure (its own cost is one row read and an HMAC per login of such a user).
            env["HANDSHAKE_MFA_REQUIRED_ROLES"] = "[]"
            # The device connector's embedded broker listens too: on a free port, not 1883, so the
            # benchmark runs beside a developer's server.
            env["HANDSHAKE_MQTT_PORT"] = str(free_port())
            log_path = workdir / "server.log"
            with uvicorn(port, env, log_path) as process:
                yield Server(backend=backend, base_url=base_url, pid=process.pid)
            problems = _server_problems(log_path)
            if problems:
                print(f"[{backend}] server log (warnings and errors):\n{problems}", file=sys.stderr)


def _server_problems(log_path: Path) -> str:
    # Log level is "warning", so anything logged is worth seeing next to the figures.
    text = log_path.read_text(errors="replace").strip()
    return text[-4000:]


# --- shared client helpers ------------------------------------------------------------------------

PASSWORD = "bench correct horse battery"


def register_and_login(client: httpx.Client, username: str, password: str = PASSWORD) -> str:
    """Register `username` through the API and return an access token from a real login."""
    response = client.post("/v1/auth/register", json={"username": username, "password": password})
    if response.status_code != 201:
        raise RuntimeError(f"register {username}: {response.status_code} {response.text}")
    response = client.post("/v1/auth/login", json={"username": username, "password": password})
    if response.status_code != 200:
        raise RuntimeError(f"login {username}: {response.status_code} {response.text}")
    token: str = response.json()["access_token"]
    return token


def check_ok(client: httpx.Client, path: str, token: str | None = None) -> None:
    """One request before measuring: a benchmark of error responses would be meaningless."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get(path, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text}")


_COUNTER = re.compile(r"^handshake_(http_requests|token_verifications)_total\{([^}]*)\} ([\d.e+]+)$", re.M)


def server_counts(base_url: str) -> dict[str, float]:
    """The server's own request and token counters from /metrics, e.g. {"5xx": 12.0, "access invalid": 3.0}:
    when wrk reports non-2xx answers, the difference of two snapshots says which."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for name, labels, value in _COUNTER.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = fields["status"] if name == "http_requests" else f"{fields['kind']} {fields['result']}"
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def count_changes(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {key: int(after[key] - before.get(key, 0.0)) for key in sorted(after) if after[key] != before.get(key, 0.0)}


def load_note() -> str:
    # The machine is shared: the load average printed beside the figures says how far to trust them.
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {one:.1f} (1 min) {five:.1f} (5 min)"


def probe_figures(output: str) -> tuple[dict[str, float], int, str]:
    """Percentiles (ms), requests, and the non-2xx line of a wrk --latency report."""
    found: dict[str, float] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "75%", "90%", "99%"):
            value = parts[1]
            scale = 1000.0 if value.endswith("s") and not value.endswith(("ms", "us")) else 1.0
            number = float(value.rstrip("mus"))
            found[parts[0]] = number * scale / (1000.0 if value.endswith("us") else 1.0)
    requests = next((int(line.split()[0]) for line in output.splitlines() if "requests in" in line), 0)
    bad = next((line.strip() for line in output.splitlines() if "Non-2xx" in line), "")
    return found, requests, bad
