"""Login throughput and event-loop health under a login storm (PERF §3).

1. Raw argon2id verifications/s with the default (OWASP) parameters, one thread per core, alternating
   with 2. logins/s through the API (many concurrent clients, correct passwords only: the lockout would
   block repeated failures), several rounds; prints logins ÷ argon2 (target ≥ 0.8).
3. Latency of sequential authenticated GET /bench/auth, idle and during a login storm (target p99 < 50 ms:
   hashing must never run on the event loop).

Run from the repository root:  .venv/bin/python -m bench.login [--backend sqlite|postgres|both]"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from argon2 import PasswordHasher, Type

from bench._server import (
    BACKENDS,
    PASSWORD,
    Server,
    check_ok,
    load_note,
    register_and_login,
    running_server,
)
from bench._stats import percentile
from shared.settings import Settings

USERS = 20  # logins spread over many accounts, so nothing per account (lockout, sessions) matters


# --- raw argon2 --------------------------------------------------------------------------------------


def default_hasher() -> PasswordHasher:
    # The defaults of Settings (never the environment): what a deployment runs unless it changes them.
    fields = Settings.model_fields
    return PasswordHasher(
        time_cost=fields["argon2_time_cost"].default,
        memory_cost=fields["argon2_memory_kib"].default,
        parallelism=fields["argon2_parallelism"].default,
        type=Type.ID,
    )


def argon2_rate(hasher: PasswordHasher, stored: str, seconds: float, threads: int) -> float:
    """Verifications/s of `threads` threads verifying in parallel (argon2-cffi releases the GIL)."""
    deadline = time.perf_counter() + seconds

    def worker() -> int:
        done = 0
        while time.perf_counter() < deadline:
            hasher.verify(stored, PASSWORD)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(pool.map(lambda _: worker(), range(threads)))
    return total / (time.perf_counter() - started)


# --- logins through the API --------------------------------------------------------------------------


@dataclass
class StormStats:
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1


async def _login_worker(base_url: str, username: str, stop: asyncio.Event, stats: StormStats) -> None:
    # One client (one connection) per worker: many concurrent users, as a real storm would be.
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        while not stop.is_set():
            try:
                response = await client.post("/v1/auth/login", json={"username": username, "password": PASSWORD})
            except httpx.HTTPError as exc:
                stats.fail(type(exc).__name__)
                continue
            if response.status_code == 200:
                stats.ok += 1
            else:
                stats.fail(str(response.status_code))


async def _storm(base_url: str, usernames: list[str], clients: int, seconds: float) -> tuple[StormStats, float]:
    stop = asyncio.Event()
    stats = StormStats()
    tasks = [
        asyncio.create_task(_login_worker(base_url, usernames[i % len(usernames)], stop, stats)) for i in range(clients)
    ]
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    stop.set()
    # Logins already in flight still finish and count, over the time they really took.
    await asyncio.gather(*tasks)
    return stats, time.perf_counter() - started


def login_storm(server: Server, usernames: list[str], clients: int, seconds: float) -> tuple[float, StormStats]:
    """Logins/s over `seconds` with `clients` concurrent connections. With wrk (PERF §6) when it is
    installed: the load generator then takes almost no CPU from the 2 cores the server hashes on,
    which a Python client would (it costs about as much per request as the server's own work)."""
    if shutil.which("wrk"):
        return _wrk_storm(server.base_url, usernames, clients, seconds)
    stats, elapsed = asyncio.run(_storm(server.base_url, usernames, clients, seconds))
    return stats.ok / elapsed, stats


_WRK_LOGIN = """
local users = {%s}
local i = 0
request = function()
  i = i + 1
  local body = '{"username":"' .. users[(i %% #users) + 1] .. '","password":"%s"}'
  return wrk.format("POST", "/v1/auth/login", {["Content-Type"] = "application/json"}, body)
end
"""


def _wrk_storm(base_url: str, usernames: list[str], clients: int, seconds: float) -> tuple[float, StormStats]:
    names = ", ".join(f'"{name}"' for name in usernames)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_LOGIN % (names, PASSWORD))
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{clients}",
                f"-d{max(1, int(seconds))}s",
                "--timeout",
                "30s",
                "-s",
                script.name,
                base_url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    stats = StormStats()
    if total is None:
        stats.fail("wrk: " + out.strip().splitlines()[-1] if out.strip() else "wrk gave no output")
        return 0.0, stats
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = int(bad.group(1)) if bad else 0
    if failed:
        stats.failures["non-2xx"] = failed
    stats.ok = int(total.group(1)) - failed
    return stats.ok / elapsed, stats


# --- latency of authenticated requests ---------------------------------------------------------------


def probe_latency(server: Server, token: str, seconds: float) -> list[float]:
    """Sequential GET /bench/auth, one at a time, for `seconds`: sorted latencies in ms."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = client.get("/bench/auth", headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"GET /bench/auth: {response.status_code} {response.text}")
    return sorted(latencies)


def latency_under_storm(
    server: Server, token: str, usernames: list[str], clients: int, seconds: float
) -> tuple[list[float], StormStats]:
    # The prober runs in its own thread with a blocking client, so the storm's event loop in this
    # process does not delay its requests; it starts once the storm is under way and ends before it.
    result: list[list[float]] = []

    def prober() -> None:
        time.sleep(1.0)
        result.append(probe_latency(server, token, seconds - 2.0))

    thread = threading.Thread(target=prober, name="latency-prober")
    thread.start()
    try:
        _, stats = login_storm(server, usernames, clients, seconds)
    finally:
        thread.join()
    return result[0], stats


# --- the run -----------------------------------------------------------------------------------------


def prepare(server: Server) -> tuple[list[str], str]:
    """USERS registered users (each logged in once) and an access token for the prober."""
    prefix = f"storm{os.getpid()}x"
    usernames = [f"{prefix}{i:02d}" for i in range(USERS)]
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        tokens = [register_and_login(client, username) for username in usernames]
        check_ok(client, "/bench/auth", tokens[0])
    return usernames, tokens[0]


def _fmt_latency(label: str, values: list[float]) -> str:
    return (
        f"  {label:<34} p50 {percentile(values, 0.50):6.2f} ms   p99 {percentile(values, 0.99):6.2f} ms"
        f"   max {values[-1]:7.2f} ms   (n={len(values)})"
    )


def bench_backend(backend: str, *, rounds: int, argon2_seconds: float, login_seconds: float, clients: int) -> None:
    threads = os.cpu_count() or 1
    hasher = default_hasher()
    stored = hasher.hash(PASSWORD)
    argon2_rates: list[float] = []
    login_rates: list[float] = []
    errors: dict[str, int] = {}
    with running_server(backend) as server:
        usernames, token = prepare(server)
        for _ in range(rounds):
            # Alternating, so both see the same share of the machine's noise.
            argon2_rates.append(argon2_rate(hasher, stored, argon2_seconds, threads))
            rate, stats = login_storm(server, usernames, clients, login_seconds)
            login_rates.append(rate)
            for what, count in stats.failures.items():
                errors[what] = errors.get(what, 0) + count
        idle = probe_latency(server, token, 3.0)
        storm, storm_stats = latency_under_storm(server, token, usernames, clients, 6.0)
    print(
        f"\n== {backend}: argon2id t={hasher.time_cost} m={hasher.memory_cost} KiB p={hasher.parallelism}, "
        f"{threads} threads; {clients} login clients over {USERS} users; {rounds} rounds; {load_note()}"
    )
    print(f"  argon2 verifies/s   median {statistics.median(argon2_rates):6.1f}   rounds: {_fmt(argon2_rates)}")
    print(f"  logins/s (API)      median {statistics.median(login_rates):6.1f}   rounds: {_fmt(login_rates)}")
    if errors:
        print(f"  ! non-200 logins: {errors}")
    ratio = statistics.median(login_rates) / statistics.median(argon2_rates)
    print(f"  logins ÷ argon2     {ratio:5.2f}   target ≥ 0.80")
    print("  GET /bench/auth, sequential, one at a time (target p99 < 50 ms during the storm):")
    print(_fmt_latency("idle", idle))
    print(_fmt_latency(f"during login storm ({storm_stats.ok} logins)", storm))
    if storm_stats.failures:
        print(f"  ! non-200 logins during the latency storm: {storm_stats.failures}")


def _fmt(values: list[float]) -> str:
    return "  ".join(f"{value:6.1f}" for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument("--rounds", type=int, default=4, help="alternating argon2/login rounds (default 4)")
    parser.add_argument("--argon2-seconds", type=float, default=2.0)
    parser.add_argument("--login-seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=16, help="concurrent login clients (default 16)")
    args = parser.parse_args()
    for backend in BACKENDS if args.backend == "both" else (args.backend,):
        bench_backend(
            backend,
            rounds=args.rounds,
            argon2_seconds=args.argon2_seconds,
            login_seconds=args.login_seconds,
            clients=args.clients,
        )


if __name__ == "__main__":
    main()
