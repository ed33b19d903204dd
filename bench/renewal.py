"""Token renewal over a live connection (issue 14, SPEC §12): N devices (default 1,000) connected to
`handshake serve` with `HANDSHAKE_DEVICE_TOKEN_TTL` at its floor (60 s), for `--lifetimes` token
lifetimes (default 3), while an app sends commands over HTTPS to random devices at a steady rate
(default 20/s). Two runs in one invocation, on the same server and the same devices:

- **with renewal**: each device fetches a fresh token (`POST /v1/devices/token`) a while before its
  token's `exp` (when a uniformly drawn 50-90% of the token's life is over: spread, as real devices
  are) and publishes it on `devices/{uid}/token`, QoS 1, on its live connection;
- **without renewal** (before SPEC §12), `--baseline expiry` (default): each device fetches its fresh
  token at the same moment but keeps it until the server closes the connection at `exp`
  (`token_expired`), then reconnects with it at once; `--baseline early`: the SDK before §12 (and
  with `--baseline early` here), which dropped its connection at that moment and reconnected with the
  fresh token, so the server never closed it.

Printed per run: reconnects (CONNACKs after each device's first), closes by the server, the
`device_disconnected` events of the run by reason (`GET /v1/admin/events`), commands sent / answered /
lost (409 device_offline, 504 device_timeout, anything else), renewals the connector accepted (the
`handshake_mqtt_renewals` counter on /metrics) and the platform's CPU seconds. These are counts, not
timings: the machine's load changes none of them, which is why the load is printed beside them anyway.
Target, with renewal: 0 reconnects and 0 lost commands.

Devices are provisioned and bound through the API; raw asyncio MQTT clients (bench/_rabbit_clients.py)
answer commands on `devices/{uid}/replies`. Everything talks to 127.0.0.1 only and stops by itself.

Run from the repository root:
    .venv/bin/python -m bench.renewal [--devices 1000] [--ttl 60] [--lifetimes 3] [--rate 20]
                                      [--backend sqlite|postgres] [--baseline expiry|early] [--baseline-first]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    sys.exit("run me as a module from the repository root: python -m bench.renewal")

import argparse
import asyncio
import base64
import contextlib
import json
import random
import re
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import orjson

from bench._api import Api, Device, bounded
from bench._brokers import Platform, serving
from bench._proc import HOST, cpu_seconds, raise_fd_limit
from bench._rabbit_clients import MqttClient, codes_text
from bench._server import BACKENDS, PASSWORD, load_note
from bench._stats import percentile

MODEL = "bench-renewal"
KEEPALIVE = 60  # s; every client sends a PINGREQ every PING_EVERY s
PING_EVERY = 20.0
CONNECT_WINDOW = 100  # CONNECTs in flight at once
ACT_AT = (0.5, 0.9)  # a device renews (or fetches its next token) when this share of its token's life is over
COMMAND_TIMEOUT = 5  # s the server waits for a device's reply (the `timeout` of the command request)
SHOW_LOST = 10  # lost commands printed with their details, as evidence


def token_exp(token: str) -> float:
    """The `exp` of a JWT, read without verifying (the device's own token, straight from the server)."""
    part = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return float(claims["exp"])


@dataclass
class Tally:
    """What one run saw from the devices' side and the app's side."""

    connacks: int = 0  # CONNACK 0, every one (the first of each device included)
    refused: Counter[str] = field(default_factory=Counter)  # CONNACKs other than 0, and CONNECTs with none
    server_closes: int = 0  # connections the server ended during the run (the device did not)
    drops: int = 0  # connections a device ended itself to reconnect (--baseline early)
    renewals_sent: int = 0
    token_failures: Counter[str] = field(default_factory=Counter)  # POST /v1/devices/token that failed
    commands_heard: int = 0
    replies_sent: int = 0
    commands: Counter[str] = field(default_factory=Counter)  # outcome -> count
    lost: list[str] = field(default_factory=list)  # the first SHOW_LOST lost commands, described
    gaps: list[float] = field(default_factory=list)  # s from the end of a connection to the next one subscribed
    fetches: list[float] = field(default_factory=list)  # s each POST /v1/devices/token took during the run
    renewals_acked: int = 0  # renewals the broker sent a PUBACK for
    closes: list[str] = field(default_factory=list)  # what each device the server closed did before (evidence)
    started: float = 0.0  # wall clock of the run's start (0: set-up)

    def command(self, outcome: str, detail: str) -> None:
        self.commands[outcome] += 1
        if outcome != "200 ok" and len(self.lost) < SHOW_LOST:
            self.lost.append(detail)


class Firmware:
    """One device: connects, subscribes to its commands, answers each one, and keeps its token fresh
    by renewal (`renew`) or by reconnecting (`baseline`: "expiry" or "early")."""

    def __init__(self, device: Device, port: int, api: Api, tally: Tally, window: asyncio.Semaphore) -> None:
        self.device = device
        self.port = port
        self.api = api
        self.tally = tally
        self.window = window
        self.client = MqttClient(device.uid, device.uid, None, keepalive=KEEPALIVE)
        self.token = ""
        self.issued_at = 0.0  # wall clock the current token was fetched
        self.expires_at = 0.0  # its `exp`
        self.next_token: str | None = None  # fetched ahead, for the reconnect at expiry (baseline)
        self.history: list[str] = []

    def note(self, what: str) -> None:
        """The device's recent history, told when the server closes it."""
        if self.tally.started:
            self.history.append(f"{time.time() - self.tally.started:.1f} {what}")
            del self.history[:-8]

    async def fetch_token(self) -> str | None:
        body = {"uid": self.device.uid, "secret": self.device.secret}
        t0 = time.monotonic()
        try:
            response = await self.api.http.post("/v1/devices/token", json=body)
        except httpx.HTTPError as exc:
            self.tally.token_failures[type(exc).__name__] += 1
            self.note(f"token request failed after {time.monotonic() - t0:.1f} s: {exc!r}")
            return None
        if self.tally.started:
            self.tally.fetches.append(time.monotonic() - t0)
        if response.status_code != 200:
            self.tally.token_failures[str(response.status_code)] += 1
            self.note(f"token request: {response.status_code} after {time.monotonic() - t0:.1f} s")
            return None
        token = str(response.json()["access_token"])
        self.note(f"fresh token (exp {token_exp(token) - self.tally.started:.1f}) after {time.monotonic() - t0:.1f} s")
        return token

    def take(self, token: str) -> None:
        self.token, self.issued_at, self.expires_at = token, time.time(), token_exp(token)

    async def connect(self, deadline: float) -> bool:
        """CONNECT with the current token until CONNACK 0 (back-off 0.5-5 s, jittered, after a refusal,
        and a fresh token after "bad credentials" or "not authorized"), then SUBSCRIBE."""
        loop = asyncio.get_running_loop()
        delay = 0.5
        while loop.time() < deadline:
            if not self.token or time.time() >= self.expires_at:
                token = await self.fetch_token()
                if token is None:
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(5.0, delay * 2)
                    continue
                self.take(token)
            self.client.password = self.token
            self.client.drop()  # the reader task of the connection before, if any: `listen` starts a new one
            async with self.window:
                outcome = await self.client.connect(HOST, self.port, timeout=30)
            if outcome.ok:
                self.client.on_message = self.answer
                self.client.listen()
                try:
                    codes = await self.client.subscribe([(f"devices/{self.device.uid}/commands", 1)])
                except (TimeoutError, ConnectionError):
                    codes = []
                if codes == [1]:
                    self.tally.connacks += 1
                    return True
                self.tally.refused[f"SUBACK {codes}"] += 1
                self.client.drop()
            else:
                self.tally.refused[str(outcome.code)] += 1
                if outcome.code in (4, 5):
                    self.token = ""
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(5.0, delay * 2)
        return False

    def answer(self, client: MqttClient, topic: str, payload: bytes) -> None:
        self.tally.commands_heard += 1
        body = orjson.loads(payload)
        reply = {"id": body["id"], "status": "ok", "result": {"pong": True}}
        client.publish(f"devices/{self.device.uid}/replies", orjson.dumps(reply), qos=1)
        self.tally.replies_sent += 1

    async def live(self, mode: str, stop: asyncio.Event, deadline: float) -> None:
        """Until `stop`: keep the connection's token fresh the way `mode` says; reconnect when closed."""
        while not stop.is_set():
            closed = self.client.closed
            if self.next_token is not None:  # baseline "expiry": the fresh token waits for the close
                act_at = float("inf")
            else:
                act_at = self.issued_at + (self.expires_at - self.issued_at) * random.uniform(*ACT_AT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if act_at == float("inf") else max(0.0, act_at - time.time())):
                    await first_of([stop.wait(), closed.wait()])
            if stop.is_set():
                return
            if closed.is_set():
                self.tally.server_closes += 1
                if mode == "renew" and self.client.closed_at is not None:
                    at = time.time() - (asyncio.get_running_loop().time() - self.client.closed_at)
                    self.tally.closes.append(
                        f"{self.device.uid} closed at {at - self.tally.started:.1f}, its token's exp"
                        f" {self.expires_at - self.tally.started:.1f}; before: " + " | ".join(self.history)
                    )
                if self.next_token is not None:
                    self.take(self.next_token)
                    self.next_token = None
                await self.reconnect(deadline)
                continue
            token = await self.fetch_token()
            if token is None:
                self.issued_at = time.time() - (self.expires_at - time.time())  # try again halfway to exp
                continue
            if mode == "renew":
                self.tally.renewals_sent += 1
                self.note("renewal published")
                acked = await self.client.publish_acked(f"devices/{self.device.uid}/token", token.encode())
                self.tally.renewals_acked += acked
                self.note("PUBACK" if acked else "no PUBACK")
                self.take(token)
            elif mode == "expiry":
                self.next_token = token
            else:  # "early": what the SDK did before SPEC §12
                self.tally.drops += 1
                self.client.drop()
                self.take(token)
                await self.reconnect(deadline)

    async def reconnect(self, deadline: float) -> None:
        """Connect again; the time without a subscribed connection goes to the tally."""
        t0 = time.monotonic()
        if await self.connect(deadline):
            self.tally.gaps.append(time.monotonic() - t0)


async def first_of(waits: list[Awaitable[Any]]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def pinger(firmwares: list[Firmware], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PING_EVERY)
        for fw in firmwares:
            if fw.client.connected:
                fw.client.ping()


async def app(base_url: str, token: str, uids: list[str], rate: float, seconds: float, tally: Tally) -> None:
    """The app: `rate` commands a second over HTTPS to random devices, for `seconds`, each on its own
    (a slow answer never holds the next one back)."""
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    headers = {"Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=base_url, timeout=COMMAND_TIMEOUT + 30, limits=limits,
                                 headers=headers) as http:  # fmt: skip
        t0 = loop.time()

        async def one(n: int, uid: str) -> None:
            sent = loop.time() - t0
            body = {"action": "ping", "params": {"n": n}, "timeout": COMMAND_TIMEOUT}
            try:
                response = await http.post(f"/v1/devices/{uid}/commands", json=body)
            except httpx.HTTPError as exc:
                tally.command(f"error {type(exc).__name__}", f"t={sent:.1f} s {uid}: {exc!r}")
                return
            answer = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if response.status_code == 200 and answer.get("status") == "ok":
                outcome = "200 ok"
            else:
                outcome = f"{response.status_code} {answer.get('error') or answer.get('status') or ''}".strip()
            took = loop.time() - t0 - sent
            tally.command(outcome, f"t={sent:.1f} s {uid}: {outcome} after {took:.1f} s")

        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while n / rate < seconds:
            await asyncio.sleep(max(0.0, t0 + n / rate - loop.time()))
            task = asyncio.create_task(one(n, random.choice(uids)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        while tasks:
            await asyncio.gather(*list(tasks))


_RENEWALS = re.compile(r'^handshake_mqtt_renewals_total\{result="(\w+)"\} ([\d.e+]+)$', re.M)


async def renewals(api: Api) -> Counter[str]:
    text = (await api.http.get("/metrics")).text
    return Counter({result: int(float(value)) for result, value in _RENEWALS.findall(text)})


async def disconnect_reasons(api: Api, admin: str, since: datetime, until: datetime, uids: set[str]) -> Counter[str]:
    """`device_disconnected` events of our devices between `since` and `until`, by `detail.reason`."""
    found: Counter[str] = Counter()
    offset = 0
    while True:
        response = await api.http.get(
            "/v1/admin/events",
            params={"type": "device_disconnected", "since": since.isoformat(), "limit": 500, "offset": offset},
            headers={"Authorization": f"Bearer {admin}"},
        )
        if response.status_code != 200:
            raise RuntimeError(f"GET /v1/admin/events: {response.status_code} {response.text[:300]}")
        rows = response.json()
        for row in rows:
            ts = datetime.fromisoformat(row["ts"])
            ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
            if ts <= until and row["device_uid"] in uids:
                found[str(row["detail"].get("reason", "?"))] += 1
        if len(rows) < 500:
            return found
        offset += 500


async def settled_reasons(api: Api, admin: str, since: datetime, until: datetime, uids: set[str]) -> Counter[str]:
    """The events are written by a journal in batches: read until two readings 2 s apart agree."""
    last = await disconnect_reasons(api, admin, since, until, uids)
    for _ in range(10):
        await asyncio.sleep(2)
        now = await disconnect_reasons(api, admin, since, until, uids)
        if now == last:
            return now
        last = now
    return last


async def wait_online(api: Api, admin: str, want: Callable[[int], bool], timeout: float) -> int:  # noqa: ASYNC109 - past it, answers the count online
    deadline = time.monotonic() + timeout
    while True:
        online = await api.online(admin, MODEL)
        if want(online) or time.monotonic() > deadline:
            return online
        await asyncio.sleep(0.25)


@dataclass
class Run:
    name: str
    devices: int
    seconds: float
    tally: Tally
    reasons: Counter[str]
    renewed: Counter[str]
    cpu: float
    online_at_end: int

    @property
    def reconnects(self) -> int:
        return self.tally.connacks - self.devices

    @property
    def lost(self) -> int:
        return sum(n for outcome, n in self.tally.commands.items() if outcome != "200 ok")


async def one_run(
    name: str, mode: str, platform: Platform, api: Api, admin: str, owner: str, devices: list[Device],
    ttl: int, lifetimes: int, rate: float,
) -> Run:  # fmt: skip
    tally = Tally()
    window = asyncio.Semaphore(CONNECT_WINDOW)
    firmwares = [Firmware(d, platform.mqtt_port, api, tally, window) for d in devices]
    n = len(devices)
    seconds = float(ttl * lifetimes)
    loop = asyncio.get_running_loop()

    t0 = loop.time()
    up = await bounded(CONNECT_WINDOW * 2, [partial(fw.connect, t0 + 180) for fw in firmwares])
    online = await wait_online(api, admin, lambda k: k >= n, 60)
    print(f"\n[{name}] {sum(up)} of {n} devices connected in {loop.time() - t0:.1f} s; {online} online for the"
          f" platform" + (f"; refused on the way: {codes_text(tally.refused)}" if tally.refused else ""))  # fmt: skip
    if sum(up) < n:
        raise RuntimeError(f"[{name}] only {sum(up)} of {n} devices connected")
    # The run starts here: what the first connects were refused is not counted (`reconnects` is
    # connacks - n: each device's first CONNACK 0 is not a reconnect).
    tally.refused.clear()
    tally.started = time.time()
    since = datetime.now(UTC)
    renewed_before = await renewals(api)
    cpu_before = cpu_seconds(platform.child.pid)
    stop = asyncio.Event()
    deadline = loop.time() + seconds + 120
    lives = [asyncio.create_task(fw.live(mode, stop, deadline)) for fw in firmwares]
    pings = asyncio.create_task(pinger(firmwares, stop))
    uids = [d.uid for d in devices]
    print(f"[{name}] {seconds:.0f} s: commands at {rate:g}/s to random devices; {load_note()}")
    await app(platform.base_url, owner, uids, rate, seconds, tally)
    until = datetime.now(UTC)
    stop.set()
    await asyncio.gather(*lives, pings)
    cpu = cpu_seconds(platform.child.pid) - cpu_before
    online_at_end = await api.online(admin, MODEL)
    renewed = await renewals(api)
    renewed.subtract(renewed_before)
    reasons = await settled_reasons(api, admin, since, until, set(uids))
    await bounded(200, [fw.client.disconnect for fw in firmwares if fw.client.writer is not None])
    left = await wait_online(api, admin, lambda k: k == 0, 60)
    if left:
        print(f"[{name}] ! {left} devices still online 60 s after every device disconnected")
    return Run(name, n, seconds, tally, reasons, +renewed, cpu, online_at_end)


def report(run: Run, ttl: int, rate: float, target: bool) -> None:
    t = run.tally
    lost = run.lost
    sent = sum(t.commands.values())

    def verdict(ok: bool) -> str:
        return ("   target 0  " + ("ok" if ok else "MISSED")) if target else ""

    print(f"\n== {run.name}: {run.devices} devices, {run.seconds:.0f} s ({run.seconds / ttl:g} token lifetimes of"
          f" {ttl} s), commands at {rate:g}/s")  # fmt: skip
    print(f"  reconnects (CONNACKs after each device's first)  {run.reconnects:6d}{verdict(run.reconnects == 0)}")
    print(f"  connections closed by the server                 {t.server_closes:6d}")
    if t.drops:
        print(f"  connections dropped by devices to reconnect      {t.drops:6d}")
    print(f"  device_disconnected events, token_expired        {run.reasons.get('token_expired', 0):6d}"
          + (f"   (all: {dict(run.reasons)})" if run.reasons else ""))  # fmt: skip
    outcomes = ", ".join(f"{outcome}: {k}" for outcome, k in t.commands.most_common() if outcome != "200 ok")
    print(f"  commands sent / answered / lost                  {sent:6d} / {t.commands.get('200 ok', 0)} / {lost}"
          + (f" ({outcomes})" if outcomes else "") + verdict(lost == 0))  # fmt: skip
    print(f"  renewals sent / PUBACKed / accepted by the connector {t.renewals_sent:6d} / {t.renewals_acked}"
          f" / {run.renewed.get('renewed', 0)}"
          + (f"   (refused: {run.renewed['refused']})" if run.renewed.get("refused") else ""))  # fmt: skip
    print(f"  commands heard / replies sent by devices         {t.commands_heard:6d} / {t.replies_sent}")
    if t.gaps:
        gaps = sorted(t.gaps)
        print(f"  offline per reconnect: median / max / total      {statistics.median(gaps):.2f} s / {gaps[-1]:.2f} s"
              f" / {sum(gaps):.0f} device-seconds")  # fmt: skip
    print(f"  refused CONNECTs during the run                  {codes_text(t.refused) if t.refused else 'none'}")
    if t.token_failures:
        print(f"  failed token requests                            {dict(t.token_failures)}")
    print(f"  online at the end (platform's view)              {run.online_at_end:6d}")
    print(f"  platform CPU during the run                      {run.cpu:6.1f} s")
    if t.fetches:
        fetches = sorted(t.fetches)
        print(f"  POST /v1/devices/token during the run            {len(fetches)}: p50 {percentile(fetches, 0.5):.2f} s,"
              f" p99 {percentile(fetches, 0.99):.2f} s, max {fetches[-1]:.2f} s")  # fmt: skip
    for line in t.lost:
        print(f"    lost: {line}")
    for line in t.closes[:SHOW_LOST]:
        print(f"    closed with renewal: {line}")


async def bench(
    platform: Platform, backend: str, n: int, ttl: int, lifetimes: int, rate: float, baseline: str, baseline_first: bool
) -> None:
    api = Api(platform.base_url)
    try:
        admin = await api.login("admin", platform.admin_password)
        t0 = time.monotonic()
        owner = f"bench-renewal-{secrets.token_hex(4)}"
        await api.call("POST", "/v1/auth/register", body={"username": owner, "password": PASSWORD}, status=(201,))
        owner_token = await api.login(owner, PASSWORD)
        devices = await api.provision(admin, MODEL, n)
        await bounded(4, [
            partial(api.call, "POST", "/v1/devices/bind", body={"uid": d.uid, "claim_code": d.claim_code},
                    token=owner_token, status=(201,))
            for d in devices
        ])  # fmt: skip
        print(f"setup: {n} devices provisioned and bound to one owner in {time.monotonic() - t0:.0f} s"
              f" (device tokens live {ttl} s)")  # fmt: skip
        runs = []
        order = [("with renewal", "renew"), (f"without renewal ({baseline})", baseline)]
        for name, mode in reversed(order) if baseline_first else order:
            # Access tokens that outlive the run: fresh ones before each.
            admin = await api.login("admin", platform.admin_password)
            app_token = await api.login(owner, PASSWORD)
            runs.append(await one_run(name, mode, platform, api, admin, app_token, devices, ttl, lifetimes, rate))
        with_, without = runs[::-1] if baseline_first else runs
        for run in runs:
            report(run, ttl, rate, target=run is with_)
        print(f"\nbackend {backend}; with renewal ÷ without: reconnects {with_.reconnects} vs {without.reconnects},"
              f" lost commands {with_.lost} vs {without.lost}, platform CPU {with_.cpu:.1f} s vs {without.cpu:.1f} s")  # fmt: skip
        if api.retries:
            print(f"set-up requests retried after a 503: {dict(api.retries)}")
    finally:
        await api.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--ttl", type=int, default=60, help="HANDSHAKE_DEVICE_TOKEN_TTL, s (60 is its floor)")
    parser.add_argument("--lifetimes", type=int, default=3, help="each run lasts ttl × lifetimes")
    parser.add_argument("--rate", type=float, default=20.0, help="commands a second (default 20)")
    parser.add_argument("--baseline", choices=("expiry", "early"), default="expiry",
                        help="without renewal: reconnect when the server closes at exp (default), or drop and"
                             " reconnect a while before exp as the SDK did before SPEC §12")  # fmt: skip
    parser.add_argument("--baseline-first", action="store_true", help="run without renewal first")
    args = parser.parse_args()
    soft, _ = raise_fd_limit()
    print(f"bench.renewal ({args.backend}): {load_note()}; open files {soft}")
    started = time.monotonic()
    with serving(args.backend, "renewal", HANDSHAKE_DEVICE_TOKEN_TTL=str(args.ttl)) as (platform, _, _):
        asyncio.run(bench(platform, args.backend, args.devices, args.ttl, args.lifetimes, args.rate, args.baseline,
                          args.baseline_first))  # fmt: skip
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
