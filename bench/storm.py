"""Reconnect storm on the embedded broker (issue 11): N devices (default 10,000) connected to `handshake
serve`, every socket dropped at once, every device reconnecting at once (at most --window CONNECTs in
flight, a jittered back-off of 0.5-5 s after a refusal, as the SDK does). Prints how long until every
device has CONNACK 0 again and until the platform's presence is right for every one (all N online, N
new device_connected events), what was refused and why (target: nothing but 3, "server unavailable",
which is load), and the p99 of `GET /v1/users/me` asked one at a time while the storm runs together
with a login storm (target < 50 ms).

Devices are provisioned through the API; their tokens are signed here with the platform's own key
directory (the connects are what is measured, not 10,000 token requests). Raw asyncio MQTT clients
(bench/_rabbit_clients.py, bench/_fleet.py): thousands fit in one event loop. Everything talks to 127.0.0.1 only and
stops by itself.

Run from the repository root:  .venv/bin/python -m bench.storm [--backend sqlite|postgres] [--devices N]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    sys.exit("run me as a module from the repository root: python -m bench.storm")

import argparse
import asyncio
import secrets
import time
from collections import Counter
from functools import partial
from pathlib import Path

import httpx

from bench._api import Api, Device, bounded
from bench._brokers import Platform, serving
from bench._fleet import Fleet
from bench._proc import cpu_seconds, raise_fd_limit
from bench._rabbit_clients import codes_text
from bench._server import BACKENDS, PASSWORD, load_note, probe_figures
from shared.keys import ring_from_settings
from shared.settings import Settings
from shared.tokens import Issuer

MODEL = "bench-storm-embedded"
LOGIN_CLIENTS = 8
USERS = 20


def sign_tokens(devices: list[Device], env: dict[str, str], base_url: str) -> None:
    settings = Settings(keys_dir=Path(env["HANDSHAKE_KEYS_DIR"]), issuer=base_url)
    keys, _ = ring_from_settings(settings, create=False)
    issuer = Issuer(keys, issuer=settings.issuer, audience=settings.audience)
    for d in devices:
        d.token, _ = issuer.device(uid=d.uid, ttl=3600)


async def make_users(api: Api) -> list[tuple[str, str]]:
    names = [f"storm-{secrets.token_hex(4)}" for _ in range(USERS)]
    await bounded(4, [
        partial(api.call, "POST", "/v1/auth/register", body={"username": n, "password": PASSWORD}, status=(201,))
        for n in names
    ])  # fmt: skip
    return [(n, PASSWORD) for n in names]


async def login_storm(base_url: str, users: list[tuple[str, str]], stop: asyncio.Event, counts: Counter[str]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

        async def one(k: int) -> None:
            i = k
            while not stop.is_set():
                username, password = users[i % len(users)]
                response = await http.post("/v1/auth/login", json={"username": username, "password": password})
                counts[str(response.status_code)] += 1
                i += LOGIN_CLIENTS

        await asyncio.gather(*(one(k) for k in range(LOGIN_CLIENTS)))


PROBE_LUA = "function delay() return 10 end\n"  # ms between requests: a phone, not a load


async def me_probe(base_url: str, token: str, seconds: int, workdir: Path) -> str:
    """GET /v1/users/me one at a time (every 10 ms) for `seconds`, by wrk in a process of its own: the
    latency seen from outside, not the bench's own busy event loop. wrk's latency distribution."""
    script = workdir / "probe.lua"
    script.write_text(PROBE_LUA)
    command = ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "--timeout", "5s", "-s", str(script),
               "-H", f"Authorization: Bearer {token}", f"{base_url}/v1/users/me"]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    return out.decode()


async def storm(platform: Platform, env: dict[str, str], n: int, window: int, timeout: float, workdir: Path) -> None:  # noqa: ASYNC109 - the bench's --timeout: a bound for each wave, not for the run
    api = Api(platform.base_url)
    try:
        admin = await api.login("admin", platform.admin_password)
        t0 = time.monotonic()
        devices = await api.provision(admin, MODEL, n)
        sign_tokens(devices, env, platform.base_url)
        users = await make_users(api)
        me = await api.login(*users[0])
        print(
            f"setup: {n} devices provisioned and their tokens signed, {USERS} users, in {time.monotonic() - t0:.0f} s"
        )

        clients = Fleet(devices, [platform.mqtt_port], window)
        first, wave = clients.wave(timeout)
        await wave
        seen = await api.until_online(admin, MODEL, n, timeout)
        up = first.last()
        print(f"first connect: {first.done} of {n} CONNACK 0 in {up if up is not None else float('nan'):.1f} s;"
              f" all online for the platform {seen if seen is not None else float('nan'):.1f} s after"
              + (f"; refused on the way: {codes_text(first.refused)}" if first.refused else ""))  # fmt: skip
        if first.done < n or seen is None:
            print("! the first wave did not complete: no storm measured")
            return
        await asyncio.sleep(2)

        before = await api.events(admin, "device_connected")
        stop = asyncio.Event()
        logins: Counter[str] = Counter()
        probe_seconds = max(5, min(int(timeout), n // 400 + 5))  # about the storm's length
        side = [asyncio.create_task(login_storm(platform.base_url, users, stop, logins))]
        probe = asyncio.create_task(me_probe(platform.base_url, me, probe_seconds, workdir))
        cpu0 = cpu_seconds(platform.child.pid)
        clients.drop_all()
        phase, wave = clients.wave(timeout)
        loop = asyncio.get_running_loop()
        presence_at: float | None = None
        while loop.time() - phase.started < timeout:
            online = await api.online(admin, MODEL)
            connected = await api.events(admin, "device_connected") - before
            if phase.done == n and online == n and connected >= n:
                presence_at = loop.time() - phase.started
                break
            await asyncio.sleep(0.25)
        probed = await probe
        stop.set()
        await wave
        await asyncio.gather(*side)
        cpu = cpu_seconds(platform.child.pid) - cpu0
        back = phase.last()
        print(f"\n== reconnect storm: {n} devices dropped at once, reconnecting at once (≤ {window} CONNECTs in flight,"
              f" back-off 0.5-5 s after a refusal), with a login storm ({LOGIN_CLIENTS} clients) and GET /v1/users/me"
              f" one at a time")  # fmt: skip
        print(f"  every device CONNACK 0 again   {back if back is not None else float('nan'):6.1f} s")
        print(f"  presence right for all {n}    {presence_at if presence_at is not None else float('nan'):6.1f} s"
              f"   target ≤ 40 s  {'ok' if presence_at is not None and presence_at <= 40 else 'MISSED'}")  # fmt: skip
        others = {code: count for code, count in phase.refused.items() if code != "3"}
        print(f"  refused on the way             {codes_text(phase.refused) if phase.refused else 'none'}"
              f"   target: none but 3  {'ok' if not others else 'MISSED'}")  # fmt: skip
        percentiles, requests, bad = probe_figures(probed)
        if "99%" in percentiles:
            p99 = percentiles["99%"]
            print(f"  GET /v1/users/me, first {probe_seconds} s  p50 {percentiles['50%']:5.1f} ms  p99 {p99:5.1f} ms"
                  f"  (wrk, one at a time every 10 ms: {requests} requests{'; ' + bad if bad else ''})"
                  f"   target p99 < 50 ms  {'ok' if p99 < 50 else 'MISSED'}")  # fmt: skip
        else:
            print(f"  ! no latency figures from wrk:\n{probed}")
        print(f"  logins meanwhile               {dict(logins)}")
        print(f"  platform CPU until presence    {cpu:.1f} s ({cpu / n * 1000:.2f} ms per reconnect, logins included)")
        await clients.disconnect_all()
    finally:
        await api.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=500, help="CONNECTs in flight at once (default 500)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per wave (default 120 s)")
    args = parser.parse_args()
    soft, _ = raise_fd_limit()
    print(f"bench.storm ({args.backend}): {load_note()}; open files {soft}")
    started = time.monotonic()
    with serving(args.backend, "storm") as (platform, env, workdir):
        asyncio.run(storm(platform, env, args.devices, args.window, args.timeout, workdir))
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
