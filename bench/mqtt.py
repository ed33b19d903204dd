"""The MQTT side of PERF §4: our embedded broker (JWT at CONNECT, topic ACL, indexed subscriptions) beside
bare amqtt's `Broker` (bench/_mqtt_baseline.py: uvloop, quiet logging, anonymous) and beside Mosquitto on
127.0.0.1:1883, every figure a ratio of runs alternated in this one run (medians, PERF §6).

1. CONNECT+DISCONNECT/s of devices with a JWT through the real platform (`handshake serve` in a subprocess,
   devices provisioned over the API, device tokens fetched beforehand) beside bare amqtt: a fresh token
   per connect (signature verified) and a reused one (verified-token cache). Target ≥ 0.8×. Our figure
   comes twice: as the clients saw it (CONNACK, DISCONNECT), and until the platform had also written each
   connect's and disconnect's presence and event (the rate it can sustain; counted through the admin API,
   the platform's own CPU for those polls left out). Devices left marked online afterwards are reported.
2. Messages/s publisher → subscriber, 100-byte numbered payloads, QoS 0 and QoS 1: a device publishes on
   devices/{uid}/events and its owner subscribes (our ACL both ways); the same clients and topics on bare
   amqtt, and Mosquitto for the record. Every message is numbered: losses and duplicates are counted.
   Then QoS 1 while other clients keep subscribing and disconnecting (PERF §5: stock amqtt with a topic
   plugin loses messages there). Target ≥ 0.8× bare amqtt, zero lost.
3. Delivery cost with 0 and with 1,000 idle subscriptions on other devices' topics (the owner subscribed to
   200 other devices it owns, 5 filters each): cost ratio, target ≤ 1.5× (stock amqtt: ~4×).
4. HTTP command round trip (POST /v1/devices/{uid}/commands → broker → SDK DeviceClient → reply → HTTP),
   p50 and p99 at 1 and at 50 concurrent commands (50 devices, and one device), beside its parts measured
   alone: an authenticated GET with one database read, and an MQTT request/reply through bare amqtt.
   Target at 1 concurrent: p50 < 10 ms, p99 < 50 ms. The SDK devices run in a child process of their own.

Besides rates, the broker process's own CPU time per operation (from /proc, 10 ms ticks) is printed: on a
shared, noisy machine it moves less than throughput does. Everything listens on 127.0.0.1 only, counts and
times are bounded (rounds are dropped rather than overrun the budget), and whatever this starts is stopped
on the way out. Warnings and errors in the servers' logs are summarised at the end.

Run from the repository root:  .venv/bin/python -m bench.mqtt [--quick]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # As a script, bench/ would come first on sys.path and bench/http.py would shadow the standard library.
    sys.exit("run me as a module from the repository root: python -m bench.mqtt")

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench._server import BACKENDS, PASSWORD, _backend_env, load_note, percentile, probe_figures
from device_connector.endpoints import no_delay
from shared.testing import free_port

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MOSQUITTO_PORT = 1883
STARTUP_TIMEOUT = 60.0
PAYLOAD_BYTES = 100
IDLE_GAP = 3.0  # a flow run ends when nothing has arrived for this long
CLK_TCK = os.sysconf("SC_CLK_TCK")
SUCCESS = "Success"
BOUND_MODEL, CONNECT_MODEL = "bench", "bench-connect"
DRAIN_TIMEOUT = 15.0
CHILDREN: list[Child] = []


@dataclass(frozen=True)
class Plan:
    connect_devices: int
    connect_rounds: int
    sustain_passes: int  # fresh tokens per device for the sustained run (every device connects this often)
    connect_threads: int
    flow_rounds: int
    qos0_messages: int
    qos1_messages: int
    churn_messages: int
    idle_devices: int  # × 5 filters each = the idle subscriptions
    idle_clients: int
    idle_messages: int
    idle_rounds: int
    command_devices: int
    commands_sequential: int
    commands_each: int  # per task at 50 concurrent on 50 devices
    commands_each_same: int  # per task at 50 concurrent on one device
    run_timeout: float  # cap on any one measured run
    # Seconds each part may spend on its measured rounds (a round that would overrun is dropped).
    connect_time: float
    flow_time: float
    idle_time: float
    budget: float  # hard stop for the whole run (SIGALRM), children stopped all the same


FULL = Plan(
    connect_devices=200, connect_rounds=3, sustain_passes=8, connect_threads=4,
    flow_rounds=3, qos0_messages=10_000, qos1_messages=5_000, churn_messages=3_000,
    idle_devices=200, idle_clients=10, idle_messages=3_000, idle_rounds=3,
    command_devices=50, commands_sequential=300, commands_each=20, commands_each_same=10,
    run_timeout=25.0, connect_time=30.0, flow_time=95.0, idle_time=35.0, budget=300.0,
)  # fmt: skip
QUICK = Plan(
    connect_devices=100, connect_rounds=1, sustain_passes=2, connect_threads=4,
    flow_rounds=1, qos0_messages=2_000, qos1_messages=1_000, churn_messages=1_000,
    idle_devices=200, idle_clients=10, idle_messages=1_000, idle_rounds=1,
    command_devices=50, commands_sequential=60, commands_each=2, commands_each_same=2,
    run_timeout=12.0, connect_time=10.0, flow_time=25.0, idle_time=15.0, budget=180.0,
)  # fmt: skip


# --- processes: the platform, bare amqtt, CPU accounting, logs --------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a whole process (all its threads), from /proc; nan if unreadable."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def settle(pids: Sequence[int | None], *, quiet: float = 0.1, longest: float = 3.0) -> None:
    """Wait until the servers are idle: a run's tail (presence writes, queued deliveries) would otherwise
    steal CPU from the next run. Idle: under `quiet` of a core over 200 ms; at most `longest` s."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(0.2)
        busy = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        if all(not (b > quiet * 0.2) for b in busy):  # nan (unreadable) counts as idle
            return


_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|[0-9a-f]{8,}|\d+")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Locked|Timeout)\b.*")


def log_problems(path: Path) -> Counter[str]:
    """Warning/error lines and the last line of each traceback, with volatile parts (addresses, numbers)
    blanked so that the same problem counts once per occurrence."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("WARNING", "ERROR", "CRITICAL")) or _EXCEPTION_LINE.match(line):
                found[_VOLATILE.sub("#", line)[:200]] += 1
    return found


class Child:
    """A subprocess whose output goes to a file (never an unread pipe), stopped on exit (all of them are
    listed in CHILDREN, which main() stops in its `finally`)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        stdout = popen.pop("stdout", None)
        # Output to the log file; with a pipe for stdout (a READY line), stderr alone goes there.
        stdout, stderr = (self._log, subprocess.STDOUT) if stdout is None else (stdout, self._log)
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, **popen)
        CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def _clean_env() -> dict[str, str]:
    # Inherited HANDSHAKE_* (a config file, cheap argon2 from a test shell...) would skew the figures.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDSHAKE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def wait_port(port: int, child: Child, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not listen on {port} in {timeout:.0f} s:\n{child.log_tail()}")


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
    http_port, mqtt_port = free_port(), free_port()
    base_url = f"http://{HOST}:{http_port}"
    admin_password = secrets.token_urlsafe(16)
    env = {
        **_clean_env(),
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


def start_amqtt(workdir: Path) -> tuple[Child, int]:
    port = free_port()
    command = [sys.executable, "-m", "bench._mqtt_baseline", "--port", str(port)]
    child = Child("bare amqtt", command, _clean_env(), workdir / "amqtt.log")
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


# --- the platform's data: users, devices, tokens --------------------------------------------------------


@dataclass
class Device:
    uid: str
    secret: str
    claim_code: str


@dataclass
class World:
    user_id: str
    user_token: str
    publisher: Device
    publisher_token: str
    connect_devices: list[Device]
    fresh_tokens: list[list[str]]  # [round][device]: a token never presented before
    warm_tokens: list[str]  # one per device, presented once before measuring
    sustain_tokens: list[str]  # fresh ones for the sustained run: every device `sustain_passes` times
    idle_devices: list[Device]  # bound to the user: idle subscriptions, then command targets
    admin_token: str
    retries: Counter[str] = field(default_factory=Counter)  # setup requests answered 503 and retried


def _ok(response: httpx.Response, what: str, status: int = 200) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")
    return response.json() if response.content else None


class ApiPool:
    """A few threads, each with its own keep-alive client. Two or three at a time is the fastest here:
    more concurrent writers only make SQLite's lock waits longer (see the product notes)."""

    def __init__(self, base_url: str, workers: int, retries: Counter[str]) -> None:
        self.base_url = base_url
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.retries = retries
        self.clients: list[httpx.Client] = []

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None, status: int, what: str) -> Any:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(base_url=self.base_url, timeout=60)
            self.clients.append(client)
        for attempt in range(6):
            response = client.post(path, json=body, headers=headers)
            if response.status_code != 503 or attempt == 5:
                return _ok(response, what, status)
            self.retries[f"{path} 503"] += 1
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items))

    def close(self) -> None:
        self.pool.shutdown()
        for client in self.clients:
            client.close()


def prepare_world(platform: Platform, plan: Plan) -> World:
    rounds = plan.connect_rounds
    retries: Counter[str] = Counter()
    with httpx.Client(base_url=platform.base_url, timeout=60) as http:
        login = {"username": "admin", "password": platform.admin_password}
        admin = _ok(http.post("/v1/auth/login", json=login), "admin login")["access_token"]
        username = f"bench-owner-{secrets.token_hex(3)}"
        _ok(http.post("/v1/auth/register", json={"username": username, "password": PASSWORD}), "register", 201)
        login = {"username": username, "password": PASSWORD}
        user_token = _ok(http.post("/v1/auth/login", json=login), "login")["access_token"]
        auth = {"Authorization": f"Bearer {user_token}"}
        user_id = _ok(http.get("/v1/users/me", headers=auth), "users/me")["id"]

    api = ApiPool(platform.base_url, 3, retries)
    try:
        # Provisioning hashes each batch's claim codes in one call of the hashing pool: two batches at
        # once keep both of its workers busy.
        # The connecting devices get a model of their own: "how many of them are still online" tells when
        # the platform has written their presence (see connect_run).
        admin_auth = {"Authorization": f"Bearer {admin}"}
        jobs = [
            (model, half)
            for model, wanted in ((BOUND_MODEL, 1 + plan.idle_devices), (CONNECT_MODEL, plan.connect_devices))
            for start in range(0, wanted, 500)
            for half in (min(500, wanted - start) - min(500, wanted - start) // 2, min(500, wanted - start) // 2)
            if half
        ]
        bodies = api.map(
            lambda job: api.post("/v1/admin/devices", {"model": job[0], "count": job[1]}, admin_auth, 201, "provision"),
            jobs,
        )
        made: dict[str, list[Device]] = {BOUND_MODEL: [], CONNECT_MODEL: []}
        for (model, _), body in zip(jobs, bodies, strict=True):
            made[model] += [Device(d["uid"], d["secret"], d["claim_code"]) for d in body["devices"]]
        publisher, idle_devices = made[BOUND_MODEL][0], made[BOUND_MODEL][1:]
        connect_devices = made[CONNECT_MODEL]
        # Bound to the user: the publisher and the idle-subscription devices (the owner's other devices).
        api.map(
            lambda d: api.post("/v1/devices/bind", {"uid": d.uid, "claim_code": d.claim_code}, auth, 201, "bind"),
            [publisher, *idle_devices],
        )
        # rounds + 1 tokens per connecting device: a fresh one per measured round, and one reused
        # (warm); then the sustained run's.
        tokens = [
            str(body["access_token"])
            for body in api.map(
                lambda d: api.post("/v1/devices/token", {"uid": d.uid, "secret": d.secret}, None, 200, "token"),
                [publisher] + connect_devices * (rounds + 1 + plan.sustain_passes),
            )
        ]
    finally:
        api.close()
    n = len(connect_devices)
    publisher_token, rest = tokens[0], tokens[1:]
    fresh = [rest[r * n : (r + 1) * n] for r in range(rounds)]
    warm = rest[rounds * n : (rounds + 1) * n]
    sustain = rest[(rounds + 1) * n :]
    return World(
        user_id, user_token, publisher, publisher_token, connect_devices, fresh, warm, sustain, idle_devices, admin,
        retries,
    )  # fmt: skip


# --- paho helpers -----------------------------------------------------------------------------------------


def new_client(client_id: str, username: str | None = None, password: str | None = None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    client.on_socket_open = no_delay  # paho does not set TCP_NODELAY (PERF §5)
    if username is not None:
        client.username_pw_set(username, password)
    return client


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


def connect_blocking(client: mqtt.Client, port: int, timeout: float = 10.0) -> None:
    """connect and wait for CONNACK with the client's own loop thread running."""
    ready = threading.Event()
    outcome: list[Any] = []

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        outcome.append(reason)
        ready.set()

    client.on_connect = on_connect
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    if not ready.wait(timeout) or outcome[0].is_failure:
        client.loop_stop()
        raise RuntimeError(f"CONNECT to {port} refused or timed out: {[str(o) for o in outcome[:1]]}")


def subscribe_blocking(client: mqtt.Client, filters: list[tuple[str, int]], timeout: float = 10.0) -> None:
    done = threading.Event()
    codes: list[Any] = []

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any = None) -> None:
        codes.extend(reasons)
        done.set()

    client.on_subscribe = on_subscribe
    client.subscribe(filters)
    if not done.wait(timeout):
        raise RuntimeError("no SUBACK")
    refused = [f for (f, _), code in zip(filters, codes, strict=False) if code.is_failure]
    if refused:
        raise RuntimeError(f"subscriptions refused: {refused[:3]} ({len(refused)} in all)")


def close(client: mqtt.Client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    with contextlib.suppress(Exception):
        client.loop_stop()


# --- 1. CONNECT + DISCONNECT ----------------------------------------------------------------------------


def connect_disconnect(port: int, client_id: str, username: str | None, password: str | None) -> str:
    """One CONNECT, its CONNACK, a DISCONNECT; returns the CONNACK's reason ("Success", "Server
    unavailable"...; "no CONNACK" after 10 s). No loop thread: paho writes at once, `loop` reads."""
    client = new_client(client_id, username, password)
    codes: list[str] = []
    client.on_connect = lambda c, u, f, reason, p=None: codes.append(str(reason))
    try:
        client.connect(HOST, port, keepalive=60)
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        if codes and codes[0] == SUCCESS:
            client.disconnect()
    except OSError as exc:
        codes.append(type(exc).__name__)
    finally:
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        for pair in (client._sockpairR, client._sockpairW):  # paho's wake-up socket pair, one per client
            if pair is not None:
                with contextlib.suppress(OSError):
                    pair.close()
    return codes[0] if codes else "no CONNACK"


class PresenceDrain:
    """When has the platform written the presence of a connect run? Each CONNECT and each DISCONNECT of a
    device writes one event (device_connected / device_disconnected) in the transaction that updates the
    device: done when both counts have grown by the run's successful connects. (Counting devices still
    marked online does not work: some stay online for good, see bench_connects.)"""

    TYPES = ("device_connected", "device_disconnected")

    def __init__(self, base_url: str, admin_token: str, pid: int) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
        self.before: dict[str, int] = {}
        self.polls = 0
        # What one poll costs the platform, so that the CPU per connect can leave it out.
        settle([pid])
        cpu0 = cpu_seconds(pid)
        for _ in range(10):
            self.start()
        self.poll_cpu = (cpu_seconds(pid) - cpu0) / 10

    def _count(self, type_: str) -> int:
        response = self.http.get("/v1/admin/events", params={"type": type_, "limit": 1})
        return int(response.headers.get("X-Total-Count", -1)) if response.status_code == 200 else -1

    def start(self) -> None:
        self.before = {type_: self._count(type_) for type_ in self.TYPES}

    def done(self, connects: int) -> bool:
        self.polls += 1
        try:
            return all(self._count(type_) >= self.before[type_] + connects for type_ in self.TYPES)
        except httpx.HTTPError:
            return False

    def still_online(self) -> int:
        params: dict[str, str | int] = {"online": "true", "model": CONNECT_MODEL, "limit": 1}
        return int(self.http.get("/v1/admin/devices", params=params).headers.get("X-Total-Count", 0))

    def close(self) -> None:
        self.http.close()


@dataclass
class Rate:
    per_s: float
    cpu_us: float  # broker CPU per operation (until drained, where that is measured)
    done: int
    drained_per_s: float = float("nan")  # ours: until the platform had also written every presence change
    undrained: bool = False  # ... which it had not within DRAIN_TIMEOUT
    refused: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicates: int = 0
    cut_off: bool = False


def connect_run(
    target: Target, creds: list[tuple[str, str, str]], threads: int, drain: PresenceDrain | None = None
) -> Rate:
    """Connect + disconnect every (client id, username, password) once, `threads` at a time. With
    `drain`, also the time until the server's background work for them is done (our presence
    writes): the rate a server can sustain, where the first is only what the clients saw."""
    refused: Counter[str] = Counter()
    chunks = [creds[i::threads] for i in range(threads)]

    def work(chunk: list[tuple[str, str, str]]) -> None:
        for client_id, username, password in chunk:
            user, pw = target.creds(username, password)
            code = connect_disconnect(target.port, target.cid(client_id), user, pw)
            if code != SUCCESS:
                refused[code] += 1

    if drain is not None:
        drain.start()
    cpu0, t0 = cpu_seconds(target.pid), time.perf_counter()
    workers = [threading.Thread(target=work, args=(chunk,), daemon=True) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - t0
    drained_rate = float("nan")
    polls_cpu = 0.0
    if drain is not None:
        ok = len(creds) - sum(refused.values())
        deadline = time.monotonic() + DRAIN_TIMEOUT
        drain.polls, pause = 0, 0.05
        while not drain.done(ok) and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(0.2, pause * 2)
        if time.monotonic() < deadline:
            drained_rate = ok / (time.perf_counter() - t0)
        polls_cpu = drain.polls * drain.poll_cpu
    cpu = cpu_seconds(target.pid) - cpu0 - polls_cpu
    ok = len(creds) - sum(refused.values())
    undrained = drain is not None and drained_rate != drained_rate
    return Rate(
        ok / elapsed, cpu / max(1, ok) * 1e6, ok, refused=refused, drained_per_s=drained_rate, undrained=undrained
    )


# --- 2, 3. publisher → subscriber -----------------------------------------------------------------------


def payload(seq: int) -> bytes:
    head = b"%08d " % seq
    return head + b"x" * (PAYLOAD_BYTES - len(head))


@dataclass
class Endpoint:
    client_id: str
    username: str
    password: str


@dataclass
class Arrivals:
    count: int = 0
    duplicates: int = 0
    last: float = 0.0  # perf_counter of the latest new message


def flow_run(
    target: Target, publisher: Endpoint, subscriber: Endpoint, topic: str, n: int, qos: int, timeout: float,
    during: Callable[[threading.Event], None] | None = None,
) -> Rate:  # fmt: skip
    """Publish n numbered 100-byte messages on `topic` as fast as the broker takes them; the subscriber
    counts what arrives. Ends when all have arrived, or nothing came for IDLE_GAP s, or at `timeout`.
    `during`, if given, runs in a thread meanwhile (other clients coming and going)."""
    topic = target.topic(topic)
    seen = bytearray(n)
    state = Arrivals()
    all_in = threading.Event()

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        seq = int(message.payload[:8])
        if seen[seq]:
            state.duplicates += 1
            return
        seen[seq] = 1
        state.count += 1
        state.last = time.perf_counter()
        if state.count == n:
            all_in.set()

    sub = new_client(target.cid(subscriber.client_id), *target.creds(subscriber.username, subscriber.password))
    sub.on_message = on_message
    pub = new_client(target.cid(publisher.client_id), *target.creds(publisher.username, publisher.password))
    pub.max_inflight_messages_set(50)
    acked = [0]
    pub.on_publish = lambda c, u, mid, reason=None, p=None: acked.__setitem__(0, acked[0] + 1)
    stop_during = threading.Event()
    helper: threading.Thread | None = None
    try:
        connect_blocking(sub, target.port)
        subscribe_blocking(sub, [(topic, qos)])
        connected: list[Any] = []
        pub.on_connect = lambda c, u, f, reason, p=None: connected.append(reason)
        pub.connect(HOST, target.port, keepalive=60)
        deadline = time.monotonic() + 10
        while not connected and time.monotonic() < deadline:
            pub.loop(timeout=0.05)
        if not connected or connected[0].is_failure:
            raise RuntimeError(f"publisher refused: {[str(c) for c in connected[:1]]}")
        if during is not None:
            helper = threading.Thread(target=during, args=(stop_during,), daemon=True)
            helper.start()
            time.sleep(0.2)

        cpu0, t0 = cpu_seconds(target.pid), time.perf_counter()
        hard_stop = time.monotonic() + timeout
        # No loop thread on the publisher: paho writes each PUBLISH at once; `loop` reads PUBACKs
        # (QoS 1, 50 in flight) and flushes what the socket could not take yet.
        for seq in range(n):
            pub.publish(topic, payload(seq), qos=qos)
            if seq % 64 == 0:
                pub.loop(timeout=0)
                if time.monotonic() > hard_stop:
                    break
        while qos and acked[0] < n and time.monotonic() < hard_stop:
            pub.loop(timeout=0.01)
        while qos == 0 and pub.want_write() and time.monotonic() < hard_stop:
            pub.loop(timeout=0.01)
        # Then the tail: all in, or silence, or the cap.
        while not all_in.is_set() and time.monotonic() < hard_stop:
            if time.perf_counter() - (state.last or t0) > IDLE_GAP:
                break
            all_in.wait(0.05)
        end = time.perf_counter()
        cpu = cpu_seconds(target.pid) - cpu0
        got = state.count
        cut_off = not all_in.is_set() and time.monotonic() >= hard_stop
        finished = end if cut_off or not state.last else state.last
        return Rate(
            got / max(1e-6, finished - t0),
            cpu / max(1, got) * 1e6,
            got,
            lost=0 if cut_off else n - got,
            duplicates=state.duplicates,
            cut_off=cut_off,
        )
    finally:
        stop_during.set()
        if helper is not None:
            helper.join(timeout=10)
        close(pub)
        close(sub)


def churn(target: Target, user: Endpoint, filters: list[str]) -> Callable[[threading.Event], None]:
    """Other clients of the same user keep connecting, subscribing (to the publisher's topic among
    others) and going away, cleanly or by dropping the connection, while messages flow."""

    def run(stop: threading.Event) -> None:
        j = 0
        while not stop.is_set():
            j += 1
            cid = target.cid(f"{user.client_id}-churn{j % 4}")
            client = new_client(cid, *target.creds(user.username, user.password))
            try:
                connect_blocking(client, target.port, timeout=5)
                subscribe_blocking(client, [(target.topic(f), 1) for f in filters], timeout=5)
                time.sleep(0.02)
                if j % 2:
                    client.disconnect()
                else:  # a network drop: the socket just closes
                    sock = client.socket()
                    if sock is not None:
                        sock.close()
            except Exception:
                pass
            finally:
                close(client)
            time.sleep(0.02)

    return run


@contextlib.contextmanager
def idle_subscriptions(target: Target, user: Endpoint, uids: list[str], clients: int) -> Iterator[int]:
    """Subscriptions that match nothing published: 5 filters (4 exact, 1 wildcard) on each of `uids`,
    the owner's other devices, spread over `clients` connections. Yields how many."""
    per_device = ("events", "state", "replies", "desired", "#")
    opened: list[mqtt.Client] = []
    total = 0
    try:
        for k in range(clients):
            client = new_client(target.cid(f"{user.client_id}-idle{k}"), *target.creds(user.username, user.password))
            opened.append(client)
            connect_blocking(client, target.port)
            filters = [(target.topic(f"devices/{uid}/{leaf}"), 0) for uid in uids[k::clients] for leaf in per_device]
            for start in range(0, len(filters), 100):
                subscribe_blocking(client, filters[start : start + 100])
            total += len(filters)
        yield total
    finally:
        for client in opened:
            close(client)


# --- 4. command round trips -----------------------------------------------------------------------------


@dataclass
class Latencies:
    values_ms: list[float]
    failures: Counter[str]
    wall: float
    server_cpu_ms: float = float("nan")  # platform CPU per successful request

    @property
    def p50(self) -> float:
        return percentile(sorted(self.values_ms), 0.50)

    @property
    def p99(self) -> float:
        return percentile(sorted(self.values_ms), 0.99)

    @property
    def rate(self) -> float:
        return len(self.values_ms) / self.wall if self.wall else float("nan")


async def _timed_requests(
    http: httpx.AsyncClient,
    jobs: list[list[tuple[str, str, dict[str, Any] | None]]],
    check: Callable[[Any], bool],
    pid: int | None = None,
) -> Latencies:
    """Each inner list is one task's sequence of (method, path, json); the tasks run concurrently."""
    values: list[float] = []
    failures: Counter[str] = Counter()

    async def task(sequence: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        for method, path, body in sequence:
            t0 = time.perf_counter()
            try:
                response = await http.request(method, path, json=body)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code != 200 or not check(response.json()):
                failures[f"{response.status_code} {_VOLATILE.sub('#', response.text[:70])}"] += 1
                continue
            values.append(elapsed)

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(task(sequence) for sequence in jobs))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return Latencies(values, failures, wall, cpu / max(1, len(values)) * 1000)


def mqtt_request_reply(target: Target, n: int) -> Latencies:
    """The broker leg alone: a requester publishes a command (QoS 1) and waits for the reply (QoS 1) that
    a responder (paho loop thread, like the SDK) publishes back; both with TCP_NODELAY."""
    uid = "BENCHRRDEVICE0000000"
    requester = new_client("bench-requester")
    responder = new_client(uid)
    got = threading.Event()

    def answer(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        c.publish(f"devices/{uid}/replies", message.payload, qos=1)

    responder.on_message = answer
    requester.on_message = lambda c, u, m: got.set()
    values: list[float] = []
    try:
        connect_blocking(responder, target.port)
        subscribe_blocking(responder, [(f"devices/{uid}/commands", 1)])
        connect_blocking(requester, target.port)
        subscribe_blocking(requester, [(f"devices/{uid}/replies", 1)])
        cpu0, t_start = cpu_seconds(target.pid), time.perf_counter()
        for i in range(n):
            got.clear()
            t0 = time.perf_counter()
            requester.publish(f"devices/{uid}/commands", b'{"id":"%d","action":"ping","params":{}}' % i, qos=1)
            if not got.wait(10):
                break
            values.append((time.perf_counter() - t0) * 1000)
        wall, cpu = time.perf_counter() - t_start, cpu_seconds(target.pid) - cpu0
        failures = Counter({"no reply in 10 s": n - len(values)}) if len(values) < n else Counter()
        return Latencies(values, failures, wall, cpu / max(1, len(values)) * 1000)
    finally:
        close(requester)
        close(responder)


def sdk_devices_child() -> None:
    """`python -m bench.mqtt --sdk-devices`: reads {base_url, mqtt_port, devices: [[uid, secret]...]} as one
    JSON line on stdin, runs an SDK DeviceClient per device answering `ping`, prints READY, and stops them
    all when stdin closes. A process of its own, so that 50 paho threads do not share the benchmark's GIL."""
    from device_connector.client import DeviceClient, HandshakeClientError

    config = json.loads(sys.stdin.readline())

    def start(uid: str, secret: str) -> DeviceClient:
        for attempt in range(5):
            client = DeviceClient(config["base_url"], uid, secret, mqtt_port=config["mqtt_port"])
            client.command("ping")(lambda params: {"pong": True, **params})
            try:
                client.start()
                return client
            except (HandshakeClientError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    client.stop()
                print(f"WARNING sdk device {uid} did not start (attempt {attempt + 1}): {exc}", file=sys.stderr)
                time.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"SDK device {uid} could not start")

    with ThreadPoolExecutor(max_workers=4) as pool:
        clients = list(pool.map(lambda pair: start(*pair), config["devices"]))
    print(f"READY {len(clients)}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    for client in clients:
        with contextlib.suppress(Exception):
            client.stop()


def start_sdk_devices(platform: Platform, devices: list[Device], workdir: Path) -> Child:
    command = [sys.executable, "-m", "bench.mqtt", "--sdk-devices"]
    child = Child(
        "SDK devices", command, _clean_env(), workdir / "devices.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.process.stdin is not None and child.process.stdout is not None
    config = {
        "base_url": platform.base_url,
        "mqtt_port": platform.mqtt_port,
        "devices": [[d.uid, d.secret] for d in devices],
    }
    child.process.stdin.write(json.dumps(config).encode() + b"\n")
    child.process.stdin.flush()
    ready, _, _ = select.select([child.process.stdout], [], [], STARTUP_TIMEOUT)
    line = child.process.stdout.readline().decode() if ready else ""
    if not line.startswith("READY"):
        child.stop()
        raise RuntimeError(f"the SDK devices did not start:\n{child.log_tail()}")
    return child


# --- reporting ------------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def cpu_text(us: float) -> str:
    # /proc counts in 10 ms ticks: under a tick per run reads as 0, which means "too small to see".
    return f"{us:6.0f}" if us == us and us > 0 else "     —"


def rate_line(name: str, rates: list[Rate], unit: str = "/s") -> str:
    per_s = [r.per_s for r in rates]
    extras = []
    refused: Counter[str] = Counter()
    for r in rates:
        refused.update(r.refused)
    if refused:
        extras.append("REFUSED " + ", ".join(f"{count}× {why}" for why, count in refused.most_common()))
    lost = sum(r.lost for r in rates)
    if lost:
        extras.append(f"{lost} LOST")
    dup = sum(r.duplicates for r in rates)
    if dup:
        extras.append(f"{dup} duplicated")
    if any(r.cut_off for r in rates):
        extras.append("cut off at the time cap")
    drained = [r.drained_per_s for r in rates]
    if any(d == d for d in drained):
        extras.append(
            f"with presence written: median {med(drained):.0f}/s, rounds {' '.join(f'{d:.0f}' for d in drained)}"
        )
    if any(r.undrained for r in rates):
        extras.append(f"PRESENCE NOT WRITTEN within {DRAIN_TIMEOUT:.0f} s in {sum(r.undrained for r in rates)} runs")
    extras.append(f"{sum(r.done for r in rates)} done")
    return (
        f"  {name:<28} median {med(per_s):6.0f}{unit}  broker CPU {cpu_text(med([r.cpu_us for r in rates]))} µs/op"
        f"   rounds: {' '.join(f'{v:.0f}' for v in per_s)}   [{', '.join(extras)}]"
    )


def ratio_line(
    label: str, ours: list[Rate], base: list[Rate], target: str, *, at_least: float | None = None, drained: bool = False
) -> str:
    by_rate = med([r.drained_per_s if drained else r.per_s for r in ours]) / med([r.per_s for r in base])
    ours_cpu, base_cpu = med([r.cpu_us for r in ours]), med([r.cpu_us for r in base])
    by_cpu = f"{base_cpu / ours_cpu:5.2f}×" if ours_cpu > 0 and base_cpu > 0 else "   — "
    mark = f"  {verdict(by_rate >= at_least)}" if at_least is not None else ""
    return f"  {label:<36} {by_rate:5.2f}× by rate ({by_cpu} by broker CPU per op)   {target}{mark}"


def rounds(wanted: int, allotment: float) -> Iterator[int]:
    """Rounds within a part's time allotment: a round that would overrun it is dropped (one always runs)."""
    start = time.monotonic()
    for round_no in range(wanted):
        elapsed = time.monotonic() - start
        if round_no and elapsed + elapsed / round_no > allotment:
            print(f"  (rounds {round_no + 1}-{wanted} dropped: they would overrun the part's {allotment:.0f} s)")
            return
        yield round_no


# --- the benchmark --------------------------------------------------------------------------------------


def bench_connects(plan: Plan, world: World, ours: Target, amqtt: Target, mosq: Target | None) -> None:
    print(f"\n== 1. CONNECT+DISCONNECT/s: {len(world.connect_devices)} devices per run, {plan.connect_threads} paho"
          f" clients at a time (TCP_NODELAY), clean sessions")  # fmt: skip
    uids = [d.uid for d in world.connect_devices]
    warm = [(u, u, t) for u, t in zip(uids, world.warm_tokens, strict=True)]
    pids = [ours.pid, amqtt.pid]
    assert ours.platform is not None
    drain = PresenceDrain(ours.platform.base_url, world.admin_token, ours.platform.child.pid)

    # Warm-up, not counted: code paths, the GeoIP table, and the reused tokens' first (verifying) use.
    connect_run(amqtt, warm[:40], plan.connect_threads)
    ours.prepare(pids)
    first = connect_run(ours, warm, plan.connect_threads, drain)
    if first.refused:
        print(f"  ! warm-up: our broker refused {dict(first.refused)}")
    if mosq is not None:
        connect_run(mosq, warm[:40], plan.connect_threads)
    results: dict[str, list[Rate]] = {"amqtt": [], "ours_fresh": [], "ours_warm": [], "mosquitto": []}
    for round_no in rounds(plan.connect_rounds, plan.connect_time):
        fresh = [(u, u, t) for u, t in zip(uids, world.fresh_tokens[round_no], strict=True)]
        runs: list[tuple[str, Target, list[tuple[str, str, str]]]] = [
            ("amqtt", amqtt, fresh), ("ours_fresh", ours, fresh), ("ours_warm", ours, warm),
        ]  # fmt: skip
        if mosq is not None:
            runs.append(("mosquitto", mosq, fresh))
        if round_no % 2:  # ABBA: drift on a noisy machine hits all alike
            runs.reverse()
        for key, target, creds in runs:
            target.prepare(pids)
            results[key].append(connect_run(target, creds, plan.connect_threads, drain if target is ours else None))
    # Sustained: many connects in one run, so the rate is the one the platform keeps up with its
    # presence and events written, not a burst whose writes are still queued when it ends.
    many = [(u, u, t) for u, t in zip(uids * plan.sustain_passes, world.sustain_tokens, strict=True)]
    settle(pids)
    sustained_amqtt = connect_run(amqtt, many, plan.connect_threads)
    settle(pids)
    sustained_ours = connect_run(ours, many, plan.connect_threads, drain)
    stuck = drain.still_online()
    drain.close()
    print(rate_line("bare amqtt (anonymous)", results["amqtt"]))
    print(rate_line("ours, fresh JWT each time", results["ours_fresh"]))
    print(rate_line("ours, JWT seen before", results["ours_warm"]))
    if results["mosquitto"]:
        print(rate_line("Mosquitto (reference)", results["mosquitto"]))
    for key, what in (("ours_fresh", "fresh JWT"), ("ours_warm", "cached JWT")):
        print(ratio_line(f"ours ({what}) ÷ bare amqtt", results[key], results["amqtt"], "target ≥ 0.80", at_least=0.8))
        print(
            ratio_line("  same, presence written", results[key], results["amqtt"], "(sustainable rate)", drained=True)
        )
    print(rate_line(f"sustained, {len(many)} connects: bare amqtt", [sustained_amqtt]))
    print(rate_line(f"sustained, {len(many)} connects: ours, fresh JWT", [sustained_ours]))
    print(ratio_line("sustained, presence written", [sustained_ours], [sustained_amqtt], "target ≥ 0.80",
                     at_least=0.8, drained=True))  # fmt: skip
    if stuck:
        print(
            f"  ! presence: {stuck} of the {len(uids)} devices, all disconnected, are still marked online"
            f" (a device_connected written after its device_disconnected)"
        )
    if results["mosquitto"]:
        print(ratio_line("bare amqtt ÷ Mosquitto", results["amqtt"], results["mosquitto"], "PERF: ~0.32"))


def endpoints(world: World) -> tuple[Endpoint, Endpoint, Endpoint, str]:
    uid = world.publisher.uid
    pub = Endpoint(uid, uid, world.publisher_token)
    sub = Endpoint(f"{world.user_id}-sub", world.user_id, world.user_token)
    user = Endpoint(world.user_id, world.user_id, world.user_token)
    return pub, sub, user, f"devices/{uid}/events"


def bench_flows(plan: Plan, world: World, ours: Target, amqtt: Target, mosq: Target | None) -> None:
    pub, sub, user, topic = endpoints(world)
    print(f"\n== 2. publisher → subscriber: {PAYLOAD_BYTES}-byte numbered messages on devices/{{uid}}/events (a device"
          f" → its owner); QoS 0: {plan.qos0_messages}, QoS 1: {plan.qos1_messages} per run (publisher: 50 in"
          f" flight)")  # fmt: skip
    targets = [("amqtt", amqtt), ("ours", ours)] + ([("mosquitto", mosq)] if mosq is not None else [])
    pids = [ours.pid, amqtt.pid]
    for _, target in targets:  # warm-up, not counted
        target.prepare(pids)
        flow_run(target, pub, sub, topic, 500, 1, plan.run_timeout)
    results: dict[tuple[str, int], list[Rate]] = {(key, q): [] for key, _ in targets for q in (0, 1)}
    for round_no in rounds(plan.flow_rounds, plan.flow_time):
        for qos, n in ((0, plan.qos0_messages), (1, plan.qos1_messages)):
            for key, target in targets if round_no % 2 == 0 else list(reversed(targets)):
                target.prepare(pids)
                results[(key, qos)].append(flow_run(target, pub, sub, topic, n, qos, plan.run_timeout))
    for qos in (0, 1):
        print(f"  QoS {qos}:")
        print(rate_line("bare amqtt (anonymous)", results[("amqtt", qos)]))
        print(rate_line("ours (JWT + ACL)", results[("ours", qos)]))
        if mosq is not None:
            print(rate_line("Mosquitto (anonymous)", results[("mosquitto", qos)]))
        print(ratio_line(f"QoS {qos}: ours ÷ bare amqtt", results[("ours", qos)], results[("amqtt", qos)],
                         "target ≥ 0.80", at_least=0.8))  # fmt: skip
        if mosq is not None:
            note = "PERF: ~0.43" if qos == 0 else "(Mosquitto drops QoS 1 past 1,000 queued)"
            print(
                ratio_line(
                    f"QoS {qos}: bare amqtt ÷ Mosquitto", results[("amqtt", qos)], results[("mosquitto", qos)], note
                )
            )
    lost = sum(x.lost for q in (0, 1) for x in results[("ours", q)])
    print(f"  lost through ours: {lost} (target 0)   {verdict(lost == 0)}")

    # QoS 1 while other clients subscribe and go away (the PERF §5 trap: a dict changed mid-broadcast).
    n = plan.churn_messages
    filters = [topic] + [f"devices/{d.uid}/state" for d in world.idle_devices[:5]]
    print(f"  QoS 1, {n} messages, while a client of the same user keeps subscribing ({len(filters)} filters, the"
          f" publisher's topic among them) and disconnecting, cleanly or by dropping the socket:")  # fmt: skip
    churned: dict[str, Rate] = {}
    for key, target in (("amqtt", amqtt), ("ours", ours)):
        target.prepare(pids)
        churned[key] = flow_run(target, pub, sub, topic, n, 1, plan.run_timeout, during=churn(target, user, filters))
    print(rate_line("bare amqtt, churn", [churned["amqtt"]]))
    print(rate_line("ours, churn", [churned["ours"]]))
    ok = churned["ours"].lost == 0 and not churned["ours"].cut_off
    print(f"  lost through ours under churn: {churned['ours'].lost} (target 0)   {verdict(ok)}")


def bench_idle(plan: Plan, world: World, ours: Target, amqtt: Target) -> None:
    pub, sub, user, topic = endpoints(world)
    uids = [d.uid for d in world.idle_devices]
    n = plan.idle_messages
    print(f"\n== 3. delivery cost with idle subscriptions: {len(uids) * 5} filters on {len(uids)} other devices the"
          f" owner owns ({plan.idle_clients} connections), QoS 0, {n} messages per run")  # fmt: skip
    results: dict[tuple[str, bool], list[Rate]] = {(k, idle): [] for k in ("amqtt", "ours") for idle in (False, True)}
    pids = [ours.pid, amqtt.pid]
    count = 0
    for round_no in rounds(plan.idle_rounds, plan.idle_time):
        order = [("amqtt", amqtt), ("ours", ours)]
        for key, target in order if round_no % 2 == 0 else list(reversed(order)):
            target.prepare(pids)
            results[(key, False)].append(flow_run(target, pub, sub, topic, n, 0, plan.run_timeout))
            with idle_subscriptions(target, user, uids, plan.idle_clients) as subscribed:
                count = subscribed
                target.prepare(pids)
                results[(key, True)].append(flow_run(target, pub, sub, topic, n, 0, plan.run_timeout))
    for key, name in (("amqtt", "bare amqtt"), ("ours", "ours")):
        print(rate_line(f"{name}, no idle subs", results[(key, False)]))
        print(rate_line(f"{name}, {count} idle subs", results[(key, True)]))
    for key, name, goal in (("ours", "ours", "target ≤ 1.50"), ("amqtt", "bare amqtt", "PERF: stock ~4×")):
        none, many = results[(key, False)], results[(key, True)]
        by_rate = med([x.per_s for x in none]) / med([x.per_s for x in many])
        cpu_none, cpu_many = med([x.cpu_us for x in none]), med([x.cpu_us for x in many])
        by_cpu = f"{cpu_many / cpu_none:5.2f}×" if cpu_none > 0 and cpu_many > 0 else "   — "
        mark = f"  {verdict(by_rate <= 1.5)}" if key == "ours" else ""
        print(f"  {name + ': cost with ÷ without':<36} {by_rate:5.2f}× by rate ({by_cpu} by broker CPU per msg)"
              f"   {goal}{mark}")  # fmt: skip


def bench_commands(plan: Plan, platform: Platform, world: World, amqtt: Target, workdir: Path) -> None:
    devices = world.idle_devices[: plan.command_devices]
    print(f"\n== 4. HTTP command round trip: POST /v1/devices/{{uid}}/commands → broker → SDK DeviceClient → reply"
          f" (httpx.AsyncClient; {len(devices)} SDK devices in a child process)")  # fmt: skip
    platform.wait_ready()
    devices_child = start_sdk_devices(platform, devices, workdir)
    pid = platform.child.pid
    try:
        auth = {"Authorization": f"Bearer {world.user_token}"}

        def command(uid: str, i: int) -> tuple[str, str, dict[str, Any]]:
            return ("POST", f"/v1/devices/{uid}/commands", {"action": "ping", "params": {"i": i}, "timeout": 10})

        def is_pong(body: Any) -> bool:
            return (
                isinstance(body, dict) and body.get("status") == "ok" and bool((body.get("result") or {}).get("pong"))
            )

        async def run() -> dict[str, Latencies]:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=platform.base_url, headers=auth, timeout=30, limits=limits) as http:
                first = devices[0].uid
                await _timed_requests(http, [[command(first, i) for i in range(20)]], is_pong)  # warm-up
                out: dict[str, Latencies] = {}
                settle([pid])
                out["state"] = await _timed_requests(
                    http,
                    [[("GET", f"/v1/devices/{first}/state", None)] * plan.commands_sequential],
                    lambda b: True,
                    pid,
                )
                settle([pid])
                out["seq"] = await _timed_requests(
                    http, [[command(first, i) for i in range(plan.commands_sequential)]], is_pong, pid
                )
                settle([pid])
                out["c50"] = await _timed_requests(
                    http, [[command(d.uid, i) for i in range(plan.commands_each)] for d in devices], is_pong, pid
                )
                settle([pid])
                out["c50same"] = await _timed_requests(
                    http, [[command(first, i) for i in range(plan.commands_each_same)] for _ in range(50)], is_pong, pid
                )
                settle([pid])
                # The floor, with the same client and concurrency (issue 11: commands ≥ 0.3× of it).
                out["healthz"] = await _timed_requests(
                    http, [[("GET", "/healthz", None)] * plan.commands_each] * 50, lambda b: True, pid
                )
                return out

        found = asyncio.run(run())
        settle([pid])
        by_wrk = wrk_commands(platform.base_url, world.user_token, [d.uid for d in devices], workdir)
    finally:
        devices_child.stop()
    settle([amqtt.pid])
    rr = mqtt_request_reply(amqtt, plan.commands_sequential)

    def line(name: str, lat: Latencies) -> str:
        bad = ""
        if lat.failures:
            bad = f"  FAILED {sum(lat.failures.values())}: " + "; ".join(
                f"{c}× {w}" for w, c in lat.failures.most_common(3)
            )
        return (f"  {name:<44} p50 {lat.p50:6.1f} ms  p99 {lat.p99:7.1f} ms  {lat.rate:5.0f}/s"
                f"  server CPU {lat.server_cpu_ms:5.2f} ms/op  ({len(lat.values_ms)} ok){bad}")  # fmt: skip

    print(line("1 concurrent", found["seq"]))
    print(line(f"50 concurrent, {len(devices)} devices", found["c50"]))
    print(line("50 concurrent, one device", found["c50same"]))
    print(line("GET /healthz, 50 concurrent (the floor)", found["healthz"]))
    floor = found["healthz"].rate
    for key, label in (("c50", f"{len(devices)} devices"), ("c50same", "one device")):
        lat = found[key]
        print(f"  50 concurrent, {label:<11}: {lat.rate / floor:4.2f}× /healthz (target ≥ 0.30) "
              f"{verdict(lat.rate / floor >= 0.3)}; p99 {lat.p99:.0f} ms (target < 250) {verdict(lat.p99 < 250)}")  # fmt: skip
    if by_wrk is not None:
        # The same targets with a client that does not saturate a core of its own (wrk, in C): what the
        # server gives, where httpx's own p99 at 50 concurrent is the client's queue.
        (c_rate, c_p99, c_bad), (h_rate, h_p99, h_bad) = by_wrk
        print(f"  by wrk, 50 connections, 8 s: commands to {len(devices)} devices {c_rate:5.0f}/s p99 {c_p99:6.1f} ms"
              f"{' (' + c_bad + ')' if c_bad else ''};  /healthz {h_rate:5.0f}/s p99 {h_p99:6.1f} ms"
              f"{' (' + h_bad + ')' if h_bad else ''}")  # fmt: skip
        print(f"  by wrk: commands {c_rate / h_rate:4.2f}× /healthz (target ≥ 0.30) {verdict(c_rate / h_rate >= 0.3)};"
              f" p99 {c_p99:.0f} ms (target < 250) {verdict(c_p99 < 250)}")  # fmt: skip
    print("  its parts, alone, 1 concurrent:")
    print(line("GET /v1/devices/{uid}/state (auth + 1 read)", found["state"]))
    print(line("MQTT request/reply, bare amqtt (its CPU)", rr))
    seq = found["seq"]
    parts = found["state"].p50 + rr.p50
    print(f"  1 concurrent: p50 < 10 ms {verdict(seq.p50 < 10)}, p99 < 50 ms {verdict(seq.p99 < 50)};"
          f" command p50 ÷ (HTTP alone + MQTT alone) p50 = {seq.p50 / parts:4.2f}")  # fmt: skip


WRK_COMMANDS_LUA = """
local uids = {%s}
local i = 0
request = function()
  i = i + 1
  local path = "/v1/devices/" .. uids[(i %% #uids) + 1] .. "/commands"
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"},
    '{"action":"ping","params":{},"timeout":10}')
end
"""


def wrk_commands(
    base_url: str, token: str, uids: list[str], workdir: Path, seconds: int = 8
) -> tuple[tuple[float, float, str], tuple[float, float, str]] | None:
    """(req/s, p99 ms, non-2xx) of commands to `uids` and of /healthz, each by wrk with 50 connections;
    None without wrk on the machine."""
    if shutil.which("wrk") is None:
        print("  (wrk is not installed: no figures by wrk)")
        return None
    script = workdir / "commands.lua"
    script.write_text(WRK_COMMANDS_LUA % (", ".join(f'"{uid}"' for uid in uids), token))

    def run(*extra: str) -> tuple[float, float, str]:
        command = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", "--timeout", "15s", *extra]
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
        percentiles, _, bad = probe_figures(out)
        rate = next((float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec:")), 0.0)
        return rate, percentiles.get("99%", float("nan")), bad

    commands = run("-s", str(script), f"{base_url}/v1/devices/{uids[0]}/commands")
    return commands, run(f"{base_url}/healthz")


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("the benchmark's hard time limit was reached")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (fewer devices, messages and rounds)")
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite", help="the platform's storage (default sqlite)")
    parser.add_argument(
        "--only", choices=["connect", "flow", "idle", "commands"], action="append", help="run only these parts"
    )
    parser.add_argument("--sdk-devices", action="store_true", help=argparse.SUPPRESS)  # the child of part 4
    args = parser.parse_args()
    if args.sdk_devices:
        sdk_devices_child()
        return
    plan = QUICK if args.quick else FULL
    parts = args.only or ["connect", "flow", "idle", "commands"]
    started = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)  # whatever happens, the finally below stops every child
    signal.alarm(int(plan.budget))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    print(f"bench.mqtt{' --quick' if args.quick else ''} ({args.backend}): {load_note()}")
    with tempfile.TemporaryDirectory(prefix="handshake-bench-mqtt-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        try:
            platform = start_platform(workdir, stack.enter_context(_backend_env(args.backend, workdir)))
            amqtt_child, amqtt_port = start_amqtt(workdir)
            t0 = time.monotonic()
            world = prepare_world(platform, plan)
            retried = f"; answered 503 and retried: {dict(world.retries)}" if world.retries else ""
            print(f"setup: platform up in {t0 - started:.0f} s; {1 + len(world.connect_devices) + len(world.idle_devices)}"
                  f" devices provisioned, {1 + len(world.idle_devices)} bound,"
                  f" {len(world.connect_devices) * (plan.connect_rounds + 1) + 1} device tokens in"
                  f" {time.monotonic() - t0:.0f} s{retried}")  # fmt: skip
            ours = Target("ours", platform.mqtt_port, platform.child.pid, platform=platform)
            amqtt = Target("amqtt", amqtt_port, amqtt_child.pid)
            mosq = None
            if mosquitto_up():
                prefix = f"hsbench{random.randrange(10**6)}-"
                mosq = Target("mosquitto", MOSQUITTO_PORT, mosquitto_pid(), prefix=prefix, with_credentials=False)
            else:
                print(f"(no Mosquitto on {HOST}:{MOSQUITTO_PORT}: its reference figures are left out)")
            if "connect" in parts:
                bench_connects(plan, world, ours, amqtt, mosq)
            if "flow" in parts:
                bench_flows(plan, world, ours, amqtt, mosq)
            if "idle" in parts:
                bench_idle(plan, world, ours, amqtt)
            if "commands" in parts:
                bench_commands(plan, platform, world, amqtt, workdir)
            if platform.not_ready:
                waits = ", ".join(f"{s:.1f}" for s in platform.not_ready)
                print(
                    f"\n! the platform's /readyz failed before {len(platform.not_ready)} of our runs; waited {waits} s"
                )
        finally:
            signal.alarm(0)
            for child in reversed(CHILDREN):
                child.stop()
            for child in CHILDREN:
                problems = log_problems(child.log_path)
                if problems:
                    print(
                        f"\n[{child.name}] log: {sum(problems.values())} warning/error lines, by kind (# = a number):"
                    )
                    for line, count in problems.most_common(8):
                        print(f"  {count:5d}× {line[:170]}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
