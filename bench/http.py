"""Authenticated HTTP throughput (PERF §2, issue 11): wrk -t1 -c50 against one uvicorn worker, comparing
in the same run GET /healthz and a trivial endpoint without authentication, the same with `CurrentUser`,
the naive PyJWT decode per request, GET /v1/users/me and GET /v1/devices (the caller's 20 devices).

Run from the repository root:  .venv/bin/python -m bench.http [--backend sqlite|postgres|both]
(as a module: this file is named `http`, and run as a script it would shadow the standard library)."""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    sys.exit("run me as a module from the repository root: python -m bench.http")

import argparse
import re
import secrets
import shutil
import statistics
import subprocess
from dataclasses import dataclass

import httpx

from bench._server import (
    BACKENDS,
    Server,
    check_ok,
    count_changes,
    load_note,
    register_and_login,
    running_server,
    server_counts,
)

ENDPOINTS = ("/healthz", "/bench/plain", "/bench/auth", "/bench/pyjwt", "/v1/users/me", "/v1/devices")
AUTHENTICATED = frozenset({"/bench/auth", "/bench/pyjwt", "/v1/users/me", "/v1/devices"})
DEVICES = 20
# (label, endpoint, baseline, what to compare with)
RATIOS = (
    ("auth ÷ plain", "/bench/auth", "/bench/plain", "target ≥ 0.80 (PERF §2)"),
    ("pyjwt ÷ plain", "/bench/pyjwt", "/bench/plain", "naive baseline (PERF: ~0.37)"),
    ("me ÷ healthz", "/v1/users/me", "/healthz", "target ≥ 0.60 (issue 11)"),
    ("devices ÷ healthz", "/v1/devices", "/healthz", f"target ≥ 0.40 (issue 11), {DEVICES} devices"),
)


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float  # every answer, errors included, as wrk counts
    ok_per_s: float  # 2xx answers only: the figure we compare (a fast 503 is no throughput)
    non_2xx: int
    socket_errors: str | None


def run_wrk(url: str, token: str | None, seconds: int, connections: int) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    found = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    non_2xx = int(found.group(1)) if found else 0
    errors = re.search(r"Socket errors:.*", output)
    all_per_s = float(rate.group(1))
    ok_share = 1 - non_2xx / max(1, int(total.group(1)))
    return WrkResult(all_per_s, all_per_s * ok_share, non_2xx, errors and errors.group(0))


def prepare(server: Server) -> str:
    """A registered, logged-in user's access token; every endpoint checked once to answer 200."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        token = register_and_login(client, f"bench{secrets.token_hex(4)}")
        seeded = client.post(
            "/bench/seed-devices", params={"count": DEVICES}, headers={"Authorization": f"Bearer {token}"}
        )
        if seeded.status_code != 200:
            raise RuntimeError(f"seeding devices: {seeded.status_code} {seeded.text}")
        for path in ENDPOINTS:
            check_ok(client, path, token if path in AUTHENTICATED else None)
    return token


def measure(server: Server, token: str, *, seconds: int, rounds: int, connections: int) -> dict[str, list[float]]:
    # A short warm-up per endpoint first (connection set-up, first-call caches), not counted.
    for path in ENDPOINTS:
        run_wrk(server.base_url + path, token if path in AUTHENTICATED else None, 1, connections)
    rates: dict[str, list[float]] = {path: [] for path in ENDPOINTS}
    for round_no in range(rounds):
        # Alternate, and rotate the order each round, so drift on a noisy machine hits all alike.
        order = ENDPOINTS[round_no % len(ENDPOINTS) :] + ENDPOINTS[: round_no % len(ENDPOINTS)]
        for path in order:
            before = server_counts(server.base_url)
            result = run_wrk(server.base_url + path, token if path in AUTHENTICATED else None, seconds, connections)
            if result.non_2xx or result.socket_errors:
                # Count what arrives, not only how fast: an error answered quickly is no throughput.
                # The server's own counters say which errors they were.
                changes = count_changes(before, server_counts(server.base_url))
                print(
                    f"  ! [{server.backend}] round {round_no + 1} {path}: {result.non_2xx} non-2xx answers"
                    f" ({result.socket_errors or 'no socket errors'}); server counted {changes}"
                )
            rates[path].append(result.ok_per_s)
    return rates


def report(backend: str, rates: dict[str, list[float]], *, seconds: int, connections: int) -> None:
    print(
        f"\n== {backend}: wrk -t1 -c{connections} -d{seconds}s, {len(rates[ENDPOINTS[0]])} rounds, 1 uvicorn worker;"
        f" {load_note()}"
    )
    medians = {path: statistics.median(values) for path, values in rates.items()}
    for path in ENDPOINTS:
        rounds = "  ".join(f"{value:8.0f}" for value in rates[path])
        print(f"  {path:<14} median {medians[path]:8.0f} 2xx/s   rounds: {rounds}")
    for label, path, baseline, target in RATIOS:
        print(f"  {label:<17} {medians[path] / medians[baseline]:5.2f}   {target}")


def bench_backend(backend: str, *, seconds: int, rounds: int, connections: int) -> None:
    with running_server(backend) as server:
        token = prepare(server)
        rates = measure(server, token, seconds=seconds, rounds=rounds, connections=connections)
    report(backend, rates, seconds=seconds, connections=connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    for backend in BACKENDS if args.backend == "both" else (args.backend,):
        bench_backend(backend, seconds=args.seconds, rounds=args.rounds, connections=args.connections)


if __name__ == "__main__":
    main()
