"""Device manager throughput, through the HTTP API of an in-process app (httpx over ASGI: no sockets, so
the figures are the server's work plus a thin client), with baselines measured in the same run:

- provisioning: devices per second in batches of 1000 (POST /v1/admin/devices), beside the raw rate of
  the per-device hashing alone (claim-code scrypt + secret SHA-256) on one core;
- device tokens: POST /v1/devices/token per second (secret check, signing, event write), beside the raw
  signing rate of shared.tokens.Issuer.device on the same key ring;
- GET /v1/devices?limit=100 per second for a user who owns 100 devices, beside GET /healthz.

Bounded in time: every phase has a budget and the whole run stays under two minutes.

Run from the repository root:  .venv/bin/python bench/devices.py [--backend sqlite|postgres]
                          or:  .venv/bin/python -m bench.devices"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/http.py would then shadow the
# standard library's `http`. Keep only the repository's view.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
if str(_BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import secrets  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402

from bench._server import PASSWORD, _backend_env  # noqa: E402
from device_manager import credentials  # noqa: E402
from shared.app import create_app  # noqa: E402
from shared.context import Context  # noqa: E402
from shared.settings import Settings  # noqa: E402

BATCH = 1000
OWNED = 100
TOTAL_BUDGET = 110.0  # seconds, start-up included: the run must stay under two minutes


@dataclass
class Clock:
    deadline: float

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: float
    errors: int = 0

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def settings_for(env: dict[str, str], workdir: Path) -> Settings:
    """The defaults (argon2 included), on the backend that `env` names."""
    return Settings(
        database_url=env["HANDSHAKE_DATABASE_URL"],
        redis_url=env.get("HANDSHAKE_REDIS_URL"),
        redis_prefix=env.get("HANDSHAKE_REDIS_PREFIX", "handshake:"),
        keys_dir=Path(env["HANDSHAKE_KEYS_DIR"]),
        issuer="http://bench",
        mfa_required_roles=[],  # its admins sign in with the password alone: the second factor is not measured
    )


async def closed_loop(call: Callable[[int], Awaitable[bool]], *, seconds: float, concurrency: int) -> Rate:
    """`concurrency` workers calling back to back for `seconds`; counts successes and failures."""
    stop = time.perf_counter() + seconds
    done = errors = 0
    counter = 0

    async def worker() -> None:
        nonlocal done, errors, counter
        while time.perf_counter() < stop:
            counter += 1
            if await call(counter):
                done += 1
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Rate(done, time.perf_counter() - start, errors)


def sync_rate(step: Callable[[], Any], seconds: float, *, chunk: int = 20) -> Rate:
    """Calls of `step` per second on this thread, looking at the clock every `chunk` calls."""
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(chunk):
            step()
        count += chunk
    return Rate(count, elapsed)


async def user_token(client: httpx.AsyncClient, ctx: Context, role: str | None = None) -> tuple[str, str]:
    """A logged-in user (of another type when `role` is given): (id, access token)."""
    username = f"bench{secrets.token_hex(4)}"
    if role is None:
        response = await client.post("/v1/auth/register", json={"username": username, "password": PASSWORD})
        response.raise_for_status()
    else:
        from account_manager.accounts import create_user
        from shared.models import Role

        await create_user(ctx, username=username, password=PASSWORD, role=Role(role))
    response = await client.post("/v1/auth/login", json={"username": username, "password": PASSWORD})
    response.raise_for_status()
    token = response.json()["access_token"]
    me = await client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    me.raise_for_status()
    return me.json()["id"], token


def raw_hashing(seconds: float) -> Rate:
    """What provisioning hashes per device (the secret's SHA-256, the claim code's scrypt), on one core."""
    uid, secret, code = credentials.new_uid(), credentials.new_secret(), credentials.new_claim_code()

    def hash_one() -> None:
        credentials.hash_secret(secret)
        credentials.hash_claim_code(uid, code)

    return sync_rate(hash_one, seconds, chunk=1)


# --- the phases ---------------------------------------------------------------------------------


async def bench_provisioning(client: httpx.AsyncClient, manufacturer: str, clock: Clock, budget: float) -> list[Any]:
    headers = {"Authorization": f"Bearer {manufacturer}"}
    made: list[Any] = []
    batch_times: list[float] = []
    hashing_before = raw_hashing(2.0)
    phase_end = time.monotonic() + budget
    while True:
        start = time.perf_counter()
        response = await client.post(
            "/v1/admin/devices", json={"model": "bench-1", "count": BATCH}, headers=headers, timeout=300
        )
        batch_times.append(time.perf_counter() - start)
        if response.status_code != 201:
            raise RuntimeError(f"provisioning: {response.status_code} {response.text[:200]}")
        made += response.json()["devices"]
        # Another batch only if one more (as long as the slowest so far) fits the phase and the run.
        if time.monotonic() + max(batch_times) > min(phase_end, clock.deadline - 45):
            break
    hashing_after = raw_hashing(2.0)
    hashing = Rate(hashing_before.count + hashing_after.count, hashing_before.seconds + hashing_after.seconds)

    total = sum(batch_times)
    api = Rate(len(made), total)
    print(f"\nProvisioning, POST /v1/admin/devices count={BATCH} ({len(batch_times)} batches)")
    print("  batches (s):           " + "  ".join(f"{t:6.2f}" for t in batch_times))
    print(f"  API                    {api.per_second:10,.0f} devices/s")
    print(
        f"  raw hashing, one core  {hashing.per_second:10,.0f} devices/s   (scrypt claim code + SHA-256 secret; "
        f"before {hashing_before.per_second:,.0f}, after {hashing_after.per_second:,.0f})"
    )
    print(f"  API ÷ raw hashing      {api.per_second / hashing.per_second:10.2f}")
    return made


async def bench_device_tokens(
    client: httpx.AsyncClient, ctx: Context, devices: list[Any], seconds: float, concurrency: int
) -> None:
    failures: dict[str, int] = {}

    async def issue(n: int) -> bool:
        device = devices[n % len(devices)]
        response = await client.post("/v1/devices/token", json={"uid": device["uid"], "secret": device["secret"]})
        if response.status_code != 200:
            # A fast refusal is no throughput: show what failed next to the figures.
            answer = f"{response.status_code} {response.text[:120]}"
            failures[answer] = failures.get(answer, 0) + 1
        return response.status_code == 200

    if not await issue(0):
        raise RuntimeError("POST /v1/devices/token does not answer 200")
    issuer = ctx.issuer
    uid = devices[0]["uid"]
    ttl = ctx.settings.device_token_ttl

    def sign() -> None:
        issuer.device(uid=uid, ttl=ttl)

    # Raw signing before and after the API, so that a drift of a shared machine shows.
    raw_before = sync_rate(sign, min(2.0, seconds / 3))
    api = await closed_loop(issue, seconds=seconds, concurrency=concurrency)
    raw_after = sync_rate(sign, min(2.0, seconds / 3))
    raw = Rate(raw_before.count + raw_after.count, raw_before.seconds + raw_after.seconds)
    print(f"\nDevice tokens ({ctx.settings.jwt_alg}), {concurrency} concurrent callers, {api.seconds:.1f} s")
    errors = f"   ({api.errors} not 200!)" if api.errors else ""
    print(f"  POST /v1/devices/token {api.per_second:10,.0f} tokens/s{errors}")
    print(
        f"  raw Issuer.device      {raw.per_second:10,.0f} tokens/s   "
        f"(before {raw_before.per_second:,.0f}, after {raw_after.per_second:,.0f})"
    )
    print(f"  API ÷ raw signing      {api.per_second / raw.per_second:10.2f}")
    for answer, count in failures.items():
        print(f"  ! {count} x {answer}")


async def bench_device_list(
    client: httpx.AsyncClient, ctx: Context, devices: list[Any], seconds: float, concurrency: int
) -> None:
    _, owner = await user_token(client, ctx)
    headers = {"Authorization": f"Bearer {owner}"}
    for device in devices[:OWNED]:
        response = await client.post(
            "/v1/devices/bind", json={"uid": device["uid"], "claim_code": device["claim_code"]}, headers=headers
        )
        if response.status_code != 201:
            raise RuntimeError(f"bind: {response.status_code} {response.text[:200]}")
    check = await client.get("/v1/devices", params={"limit": OWNED}, headers=headers)
    if check.status_code != 200 or len(check.json()) != OWNED or check.headers["x-total-count"] != str(OWNED):
        raise RuntimeError(f"GET /v1/devices: {check.status_code}, {len(check.json())} devices")

    async def list_devices(_: int) -> bool:
        response = await client.get("/v1/devices", params={"limit": OWNED}, headers=headers)
        return response.status_code == 200

    async def healthz(_: int) -> bool:
        return (await client.get("/healthz")).status_code == 200

    half = seconds / 2
    base_1 = await closed_loop(healthz, seconds=half / 2, concurrency=concurrency)
    listed = await closed_loop(list_devices, seconds=half, concurrency=concurrency)
    base_2 = await closed_loop(healthz, seconds=half / 2, concurrency=concurrency)
    base = Rate(base_1.count + base_2.count, base_1.seconds + base_2.seconds)
    print(f"\nGET /v1/devices?limit={OWNED} for a user owning {OWNED} devices, {concurrency} concurrent callers")
    errors = f"   ({listed.errors} not 200!)" if listed.errors else ""
    print(f"  GET /v1/devices        {listed.per_second:10,.0f} req/s{errors}")
    print(f"  GET /healthz           {base.per_second:10,.0f} req/s   (same client, no auth, no database)")
    print(f"  list ÷ healthz         {listed.per_second / base.per_second:10.2f}")
    print(f"  devices served         {listed.per_second * OWNED:10,.0f} device rows/s")


async def run(settings: Settings, backend: str, *, concurrency: int, provision_budget: float, seconds: float) -> None:
    clock = Clock(time.monotonic() + TOTAL_BUDGET)
    # The two services under test; the connector's broker is not part of this measurement.
    app = create_app(settings, services=("account-manager", "device-manager"), migrate=True)
    async with LifespanManager(app) as manager:
        ctx: Context = app.state.ctx
        transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as client:
            print(
                f"backend {backend}; Python {platform.python_version()}, {os.cpu_count()} CPUs; "
                f"hashing pool {ctx.hashing.workers} threads; in-process ASGI (httpx), no sockets"
            )
            _, manufacturer = await user_token(client, ctx, "manufacturer")
            devices = await bench_provisioning(client, manufacturer, clock, provision_budget)
            token_seconds = max(2.0, min(seconds, (clock.left() - 20) / 2))
            await bench_device_tokens(client, ctx, devices, token_seconds, concurrency)
            list_seconds = max(2.0, min(seconds, clock.left() - 12))
            await bench_device_list(client, ctx, devices, list_seconds, concurrency)
    print(f"\ntotal {TOTAL_BUDGET - clock.left():.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (default 16)")
    parser.add_argument("--provision-seconds", type=float, default=35.0, help="provisioning budget (default 35)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="handshake-bench-devices-") as tmp:
        workdir = Path(tmp)
        # Creates (and afterwards drops) a PostgreSQL database and a Redis prefix for "postgres".
        with _backend_env(args.backend, workdir) as env:
            settings = settings_for(env, workdir)
            work = run(
                settings,
                args.backend,
                concurrency=args.concurrency,
                provision_budget=args.provision_seconds,
                seconds=args.seconds,
            )
            asyncio.run(work)


if __name__ == "__main__":
    main()
