"""PERF §4b on a clustered broker: the platform as the identity backend of a three-node RabbitMQ 3.10 cluster
(tests/rabbitmq.py: own node names and ports on 127.0.0.1; the system RabbitMQ is never touched), the real
uvicorn of bench/_server.py in a subprocess with HANDSHAKE_MQTT_BROKER=rabbitmq, its connector attached to
node C, RabbitMQ's `rabbitmq_auth_backend_http` calling its four hooks. Clients are raw asyncio MQTT 3.1.1
(bench/_rabbit_clients.py, TCP_NODELAY), spread over the three nodes.

1. CONNECT+DISCONNECT/s of devices (client id = username = UID, password = a device token from
   POST /v1/devices/token) through our HTTP backend ÷ the same with RabbitMQ's internal users
   (`rabbitmqctl import_definitions`: users, permissions and topic permissions, the internal database that
   `add_user`/`set_permissions`/`set_topic_permissions` write; `auth_backends.1 = internal` answers them
   without a hook), same cluster, same run, alternated rounds (ABBA), medians. Ours also until the platform
   has written each connect's and disconnect's presence (the sustainable rate). Target ≥ 0.8×.
2. Reconnect storm: N devices (--devices, default 10,000) connected across the nodes, every socket dropped at
   once, every device reconnecting at once (at most --window CONNECTs in flight, retrying a refusal after a
   jittered back-off): seconds until every device has CONNACK 0 again AND the platform's presence says all N
   are online (GET /v1/admin/devices?online=true X-Total-Count, and every reconnect's device_connected event
   written). Refusals by return code; a timeline of CONNACKs vs presence written; CPU of the platform, the
   RabbitMQ nodes and this process over the storm, and hook calls per device. Target ≤ 40 s.
3. Command round trip: a device on node A answering commands, POST /v1/devices/{uid}/commands to the platform
   (its connector on node C): p50/p99 at 1 and at 50 concurrent (50 devices), beside its parts alone: an
   authenticated GET with one read, and the MQTT request/reply through the cluster (an internal user on C).
   Target p50 < 10 ms.
4. Revocation-to-close: K devices connected, each disabled (POST /v1/admin/devices/{uid}/disable, one every
   REVOKE_GAP s): time until the broker closes its connection; then users logging out (POST /v1/auth/logout)
   with an MQTT connection open. SPEC: within 5 s.

Parts run in the order 1, 3, 4, 2 (the storm last: it leaves the most behind). Everything listens on
127.0.0.1 only; the cluster and the server are stopped on the way out, whatever happens; a hard time limit
(SIGALRM) bounds the run. Exit status 2 with one line when RabbitMQ is not installed.

Run from the repository root:  .venv/bin/python -m bench.rabbitmq [--backend sqlite|postgres|both] [--quick]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # As a script, bench/ would come first on sys.path and bench/http.py would shadow the standard library.
    sys.exit("run me as a module from the repository root: python -m bench.rabbitmq")

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench._api import Api, Device, bounded, command, is_pong, timed_requests
from bench._fleet import Fleet
from bench._proc import (
    HOST,
    REPO,
    clean_env,
    cpu_seconds,
    log_lines,
    print_log_summary,
    raise_fd_limit,
    self_cpu,
    set_time_limit,
)
from bench._proc import settle_async as settle
from bench._rabbit_clients import MqttClient, codes_text, connect_disconnect
from bench._server import BACKENDS, PASSWORD, _backend_env, load_note, uvicorn
from bench._stats import Latencies, Rate, med, percentile, verdict
from shared.testing import free_port
from tests.rabbitmq import RABBITMQ_BIN, RabbitCluster, RabbitUnavailableError

A, B, C = 0, 1, 2
ADMIN = "bench-admin"
STORM_MODEL, COMMAND_MODEL, REVOKE_MODEL = "bench-storm", "bench-command", "bench-revoke"
INTERNAL_PREFIX = "bench-internal-"  # matches neither a UID nor a user id: the connector leaves them alone
REVOKE_GAP = 0.25
RABBIT_PROBLEM = re.compile(r"\[(warning|error)\] <[\d.]+> \S")  # the first line of each, not a report's rest
OURS = re.compile(r"[A-Z0-9]{20}|[a-z0-9]{20}")  # a device's UID or a user's id: the platform's connections
WITHIN = 5.0  # SPEC: revocations close live connections within 5 s
DRAIN_TIMEOUT = 20.0
STALL = 3.0  # s without a new presence event: the rest will not come


@dataclass(frozen=True)
class Plan:
    devices: int  # the storm's
    connect_per_run: int
    connect_rounds: int
    connect_workers: int  # per node
    connect_time: float  # seconds part 1 may spend on its measured rounds
    command_devices: int
    commands_sequential: int
    commands_each: int  # per device at 50 concurrent
    revoke_devices: int
    logout_users: int
    storm_timeout: float  # seconds the storm may take before it is reported as not done
    budget_base: float  # hard limit: this plus budget_per_backend for each backend
    budget_per_backend: float


FULL = Plan(
    devices=10_000, connect_per_run=600, connect_rounds=6, connect_workers=4, connect_time=90.0,
    command_devices=50, commands_sequential=300, commands_each=10, revoke_devices=50, logout_users=5,
    storm_timeout=120.0, budget_base=180.0, budget_per_backend=600.0,
)  # fmt: skip
QUICK = Plan(
    devices=600, connect_per_run=150, connect_rounds=2, connect_workers=4, connect_time=30.0,
    command_devices=50, commands_sequential=60, commands_each=2, revoke_devices=12, logout_users=2,
    storm_timeout=60.0, budget_base=150.0, budget_per_backend=300.0,
)  # fmt: skip


# --- processes: the cluster's users, the platform ---------------------------------------------------------


def _password_hash(password: str) -> str:
    """rabbit_password_hashing_sha256, what `rabbitmqctl add_user` stores: base64(salt + sha256(salt + pw))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def add_internal_users(cluster: RabbitCluster, count: int, workdir: Path) -> list[tuple[str, str]]:
    """`count` users in RabbitMQ's internal database, allowed to use the vhost and amq.topic: the baseline.
    One `rabbitmqctl import_definitions` instead of 3 × count rabbitmqctl runs (each starts an Erlang VM)."""
    users = [(f"{INTERNAL_PREFIX}{i:05d}", secrets.token_urlsafe(24)) for i in range(count)]
    definitions = {
        "users": [
            {"name": n, "password_hash": _password_hash(p), "hashing_algorithm": "rabbit_password_hashing_sha256",
             "tags": [], "limits": {}}
            for n, p in users
        ],
        "permissions": [{"user": n, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} for n, _ in users],
        "topic_permissions": [
            {"user": n, "vhost": "/", "exchange": "amq.topic", "write": ".*", "read": ".*"} for n, _ in users
        ],
    }  # fmt: skip
    path = workdir / "internal-users.json"
    path.write_text(json.dumps(definitions))
    cluster.ctl("import_definitions", str(path), timeout=120)
    return users


@dataclass
class Platform:
    backend: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_password: str

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def running_platform(backend: str, cluster: RabbitCluster, port: int, workdir: Path) -> Iterator[Platform]:
    """bench/_server.py's uvicorn (uvloop, httptools, no access log) on `port`, the one the cluster's auth
    backend calls, with the connector on RabbitMQ (node C); an admin made with `handshake users create`."""
    workdir.mkdir(parents=True, exist_ok=True)
    with _backend_env(backend, workdir) as backend_env:
        base_url = f"http://{HOST}:{port}"
        env = {
            **clean_env(),
            **backend_env,
            "HANDSHAKE_ISSUER": base_url,
            "HANDSHAKE_MQTT_BROKER": "rabbitmq",
            "HANDSHAKE_MQTT_BROKER_URL": cluster.mqtt_url(C),
            "HANDSHAKE_MQTT_BROKER_API_URL": cluster.api_url(C),
            "HANDSHAKE_MQTT_BROKER_AMQP_URL": cluster.amqp_url(C),
            "HANDSHAKE_MQTT_HOOK_SECRET": cluster.secret,
            "HANDSHAKE_MFA_REQUIRED_ROLES": "[]",  # the admin signs in with the password alone (not measured here)
        }
        admin_password = secrets.token_urlsafe(18)
        made = subprocess.run(
            [sys.executable, "-m", "shared.cli", "users", "create", ADMIN, "--role", "admin", "--password", admin_password],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"handshake users create: {made.stdout}{made.stderr}")
        log_path = workdir / "server.log"
        with uvicorn(port, env, log_path) as process:
            _wait_ready(process, base_url, log_path)
            yield Platform(backend, base_url, process, log_path, admin_password)
        # Its log level is "warning": every line in it is worth a look, tracebacks' last lines included.
        print_log_summary(
            f"{backend} platform", log_lines(log_path, lambda line: not line.startswith((" ", "Traceback")))
        )


def rabbit_logs(cluster: RabbitCluster) -> list[Path]:
    return [cluster.root / chr(ord("a") + i) / "log" / f"{node.name}.log" for i, node in enumerate(cluster.nodes)]


def _wait_ready(process: subprocess.Popen[bytes], base_url: str, log_path: Path, timeout: float = 60) -> None:
    """/readyz: the relay is connected to node C and the presence consumer to AMQP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the platform was not ready on RabbitMQ in {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")


# --- the platform's API ---------------------------------------------------------------------------------


@dataclass
class Person:
    id: str
    token: str


@dataclass
class World:
    admin: str
    owner: Person
    storm: list[Device]
    commands: list[Device]
    revoke: list[Device]
    logout: list[Person]


async def new_person(api: Api) -> Person:
    username = f"bench-{secrets.token_hex(5)}"
    await api.call("POST", "/v1/auth/register", body={"username": username, "password": PASSWORD}, status=(201,))
    token = await api.login(username, PASSWORD)
    me = await api.call("GET", "/v1/users/me", token=token)
    return Person(me["id"], token)


async def prepare_world(api: Api, platform: Platform, plan: Plan) -> World:
    admin = await api.login(ADMIN, platform.admin_password)
    owner = await new_person(api)
    logout = [await new_person(api) for _ in range(plan.logout_users)]
    wanted = ((STORM_MODEL, plan.devices), (COMMAND_MODEL, plan.command_devices), (REVOKE_MODEL, plan.revoke_devices))
    made = {model: await api.provision(admin, model, n) for model, n in wanted}

    def bind(d: Device) -> Callable[[], Awaitable[Any]]:
        body = {"uid": d.uid, "claim_code": d.claim_code}
        return lambda: api.call("POST", "/v1/devices/bind", body=body, token=owner.token, status=(201,))

    await bounded(3, [bind(d) for d in made[COMMAND_MODEL]])
    everyone = [d for model, _ in wanted for d in made[model]]

    def token(d: Device) -> Callable[[], Awaitable[Any]]:
        return lambda: api.call("POST", "/v1/devices/token", body={"uid": d.uid, "secret": d.secret})

    for d, body in zip(everyone, await bounded(4, [token(d) for d in everyone]), strict=True):
        d.token = body["access_token"]
    return World(admin, owner, made[STORM_MODEL], made[COMMAND_MODEL], made[REVOKE_MODEL], logout)


# --- reporting helpers ----------------------------------------------------------------------------------


@dataclass
class Results:
    """The figures of one backend, for the closing table."""

    backend: str
    rows: dict[str, tuple[str, str, bool | None]] = field(default_factory=dict)  # name -> (figure, target, ok)

    def add(self, name: str, figure: str, target: str = "", ok: bool | None = None) -> None:
        self.rows[name] = (figure, target, ok)


class EventWatch:
    """This benchmark's own consumer of `connection.created` and `connection.closed` on amq.rabbitmq.event (on
    node A, an exclusive queue like the connector's): when the platform never sees a connected device online,
    it tells whether RabbitMQ announced that connection at all, and whether its name (`client address:port ->
    node address:port`) had been used by an earlier connection whose close RabbitMQ announced."""

    def __init__(self) -> None:
        self.created: set[str] = set()  # usernames with a connection.created
        self.open: set[str] = set()  # names of the platform's users' and devices' connections, until closed
        self.unmatched: set[str] = set()  # names closed while no such connection was open (others', refused)
        self.collided: set[str] = set()  # usernames whose connection reused such a name
        self._connection: Any = None

    async def start(self, amqp_url: str) -> None:
        import aio_pika

        self._connection = await aio_pika.connect_robust(amqp_url, timeout=10)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        for key in ("connection.created", "connection.closed"):
            await queue.bind("amq.rabbitmq.event", routing_key=key)
        await queue.consume(self._on_event, no_ack=True)

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    async def _on_event(self, message: Any) -> None:
        headers = message.headers or {}
        name = self._text(headers.get("name"))
        if message.routing_key == "connection.closed":
            if name in self.open:
                self.open.discard(name)
            else:
                self.unmatched.add(name)
            return
        user = self._text(headers.get("user"))
        if "mqtt" not in self._text(headers.get("protocol")).lower() or not OURS.fullmatch(user):
            return
        self.created.add(user)
        self.open.add(name)
        if name in self.unmatched:
            self.unmatched.discard(name)
            self.collided.add(user)

    def announced(self, uids: list[str]) -> int:
        return sum(1 for uid in uids if uid in self.created)

    def reused(self, uids: list[str]) -> int:
        return sum(1 for uid in uids if uid in self.collided)

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def offline_devices(api: Api, admin: str, model: str) -> list[str]:
    found: list[str] = []
    headers = {"Authorization": f"Bearer {admin}"}
    while True:
        params: dict[str, str | int] = {"model": model, "online": "false", "limit": 500, "offset": len(found)}
        page = (await api.http.get("/v1/admin/devices", params=params, headers=headers)).json()
        found += [d["uid"] for d in page]
        if len(page) < 500:
            return found


async def explain_missing(api: Api, admin: str, model: str, watch: EventWatch, connected: set[str]) -> str:
    """Of the devices with a CONNACK 0 that the platform does not show online, how many RabbitMQ announced."""
    missing = [uid for uid in await offline_devices(api, admin, model) if uid in connected]
    if not missing:
        return ""
    return (
        f"{len(missing)} devices with a live connection (CONNACK 0) are not online for the platform; RabbitMQ"
        f" announced {watch.announced(missing)} of them on amq.rabbitmq.event (this benchmark's own consumer saw"
        f" their connection.created), and {watch.reused(missing)} of those connections bear the name (client"
        f" port -> node port) of an earlier connection of somebody else (an internal user, a refused CONNECT)"
        f" whose close it had announced; e.g. {', '.join(missing[:3])}"
    )


# --- 1. CONNECT + DISCONNECT ------------------------------------------------------------------------------


class Drain:
    """When has the platform written a run's presence? Each device CONNECT and DISCONNECT writes one event."""

    def __init__(self, api: Api, admin: str) -> None:
        self.api, self.admin = api, admin
        self.before = (0, 0)

    async def counts(self) -> tuple[int, int]:
        return (
            await self.api.events(self.admin, "device_connected"),
            await self.api.events(self.admin, "device_disconnected"),
        )

    async def start(self) -> None:
        self.before = await self.counts()

    async def wait(self, n: int, timeout: float) -> int:  # noqa: ASYNC109 - past it (or a stall), answers the count missing
        """Until both counts have grown by n: 0, or how many device_connected are missing when they stop
        growing for STALL s (or at `timeout`)."""
        deadline, last, since = time.monotonic() + timeout, (-1, -1), time.monotonic()
        while True:
            now = await self.counts()
            if now[0] >= self.before[0] + n and now[1] >= self.before[1] + n:
                return 0
            if now != last:
                last, since = now, time.monotonic()
            if time.monotonic() > deadline or time.monotonic() - since > STALL:
                return max(1, self.before[0] + n - now[0])
            await asyncio.sleep(0.2)


async def connect_run(
    ports: list[int],
    creds: list[tuple[str, str, str]],
    workers: int,
    pids: tuple[int, list[int]],
    drain: Drain | None,
    watch: EventWatch | None = None,
) -> Rate:
    """Every (client id, username, password) CONNECTs and DISCONNECTs once, on node i % 3, `workers` loops per
    node. With `drain`, also until the platform has written the presence of them all."""
    refused: Counter[str] = Counter()
    lanes: list[tuple[int, list[tuple[str, str, str]]]] = []
    for node, port in enumerate(ports):
        mine = creds[node :: len(ports)]
        lanes += [(port, mine[w::workers]) for w in range(workers)]

    async def lane(port: int, items: list[tuple[str, str, str]]) -> None:
        for client_id, username, password in items:
            code = await connect_disconnect(HOST, port, client_id, username, password)
            if code != 0:
                refused[str(code)] += 1

    platform_pid, beams = pids
    collided = len(watch.collided) if watch is not None else 0
    if drain is not None:
        await drain.start()
    cpu_p, cpu_b = cpu_seconds(platform_pid), sum(cpu_seconds(p) for p in beams)
    t0 = time.perf_counter()
    await asyncio.gather(*(lane(port, items) for port, items in lanes))
    elapsed = time.perf_counter() - t0
    ok = len(creds) - sum(refused.values())
    drained, unwritten = float("nan"), 0
    if drain is not None:
        unwritten = await drain.wait(ok, DRAIN_TIMEOUT)
        if not unwritten:
            drained = ok / (time.perf_counter() - t0)
    cpu_p = cpu_seconds(platform_pid) - cpu_p
    cpu_b = sum(cpu_seconds(p) for p in beams) - cpu_b
    per = 1e6 / max(1, ok)
    if watch is not None:
        collided = len(watch.collided) - collided
    return Rate(
        ok / elapsed, ok, cpu_p * per, refused, drained, unwritten=unwritten, broker_us=cpu_b * per, collided=collided
    )


def rate_line(name: str, rates: list[Rate]) -> str:
    refused: Counter[str] = Counter()
    for r in rates:
        refused.update(r.refused)
    extras = [f"REFUSED {codes_text(refused)}"] if refused else []
    drained = [r.drained_per_s for r in rates]
    if any(d == d for d in drained):
        extras.append(f"presence written: median {med(drained):.0f}/s, rounds {' '.join(f'{d:.0f}' for d in drained)}")
    if any(d != d for d in drained) and name.startswith("ours"):
        extras.append(
            f"PRESENCE NEVER WRITTEN in {sum(d != d for d in drained)} runs: {sum(r.unwritten for r in rates)}"
            f" device_connected missing; {sum(r.collided for r in rates)} connections reused the name of an"
            " untracked closed one"
        )
    extras.append(f"{sum(r.done for r in rates)} done")
    return (f"  {name:<30} median {med([r.per_s for r in rates]):5.0f}/s   CPU µs/op: RabbitMQ"
            f" {med([r.broker_us for r in rates]):5.0f}, platform {med([r.cpu_us for r in rates]):5.0f}"
            f"   rounds: {' '.join(f'{r.per_s:.0f}' for r in rates)}   [{', '.join(extras)}]")  # fmt: skip


async def bench_connects(
    plan: Plan, api: Api, world: World, cluster: RabbitCluster, platform: Platform,
    internal: list[tuple[str, str]], watch: EventWatch, results: Results,
) -> None:  # fmt: skip
    n = plan.connect_per_run
    print(f"\n== 1. CONNECT+DISCONNECT/s through the cluster: {n} clients per run over the 3 nodes,"
          f" {plan.connect_workers * 3} at a time (raw asyncio MQTT, TCP_NODELAY, clean session)")  # fmt: skip
    ports = [node.mqtt_port for node in cluster.nodes]
    beams = [node.pid for node in cluster.nodes]
    pids = (platform.pid, beams)
    ours = [(d.uid, d.uid, d.token) for d in world.storm[:n]]
    theirs = [(name, name, password) for name, password in internal[:n]]
    drain = Drain(api, world.admin)
    # Warm-up, not counted: code paths, and each device token's first (verifying) use.
    for creds in (theirs, ours):
        await settle([platform.pid, *beams])
        warm = await connect_run(ports, creds, plan.connect_workers, pids, None)
        if warm.refused:
            print(f"  ! warm-up refused: {codes_text(warm.refused)}")
    runs: dict[str, list[Rate]] = {"internal": [], "ours": []}
    started = time.monotonic()
    for round_no in range(plan.connect_rounds):
        elapsed = time.monotonic() - started
        if round_no and elapsed + elapsed / round_no > plan.connect_time:
            print(
                f"  (rounds {round_no + 1}-{plan.connect_rounds} dropped: they would overrun {plan.connect_time:.0f} s)"
            )
            break
        order = [("internal", theirs), ("ours", ours)]
        if round_no % 2:
            order.reverse()
        for key, creds in order:
            await settle([platform.pid, *beams])
            runs[key].append(
                await connect_run(ports, creds, plan.connect_workers, pids, drain if key == "ours" else None, watch)
            )
    stuck = await api.online(world.admin, STORM_MODEL)
    print(rate_line("RabbitMQ internal users", runs["internal"]))
    print(rate_line("ours (HTTP auth backend)", runs["ours"]))
    base = med([r.per_s for r in runs["internal"]])
    ratio = med([r.per_s for r in runs["ours"]]) / base
    drained = med([r.drained_per_s for r in runs["ours"]]) / base
    print(f"  {'ours ÷ internal users':<36} {ratio:5.2f}×   target ≥ 0.80  {verdict(ratio >= 0.8)}")
    print(f"  {'  same, presence written':<36} {drained:5.2f}×   (sustainable rate)")
    if stuck:
        print(f"  ! presence: {stuck} of the {n} devices, all disconnected, are still marked online")
    results.add(
        "1. CONNECT/s ours ÷ internal", f"{ratio:.2f}× ({med([r.per_s for r in runs['ours']]):.0f} vs {base:.0f}/s)",
        "≥ 0.80", ratio >= 0.8,
    )  # fmt: skip
    unwritten = sum(r.unwritten for r in runs["ours"])
    note = f" ({sum(r.drained_per_s != r.drained_per_s for r in runs['ours'])} runs never fully written)"
    results.add("   same, presence written", f"{drained:.2f}×" + (note if unwritten else ""))
    if unwritten:
        collided = sum(r.collided for r in runs["ours"])
        results.add("   connects never recorded", f"{unwritten} ({collided} reused a closed name)", "0", False)
    if stuck:
        results.add("   left marked online", str(stuck), "0", False)


# --- 3. command round trips -------------------------------------------------------------------------------


async def answering_device(port: int, device: Device) -> MqttClient:
    """The firmware of one device: subscribed to its commands, answering each with its params."""
    client = MqttClient(device.uid, device.uid, device.token)
    outcome = await client.connect(HOST, port)
    if not outcome.ok:
        raise RuntimeError(f"device {device.uid} refused: {outcome.code}")

    def answer(c: MqttClient, topic: str, payload: bytes) -> None:
        body = orjson.loads(payload)
        reply = {"id": body["id"], "status": "ok", "result": {"pong": True, **(body.get("params") or {})}}
        c.publish(f"devices/{c.client_id}/replies", orjson.dumps(reply), qos=1)

    client.on_message = answer
    client.listen()
    codes = await client.subscribe([(f"devices/{device.uid}/commands", 1)])
    if codes != [1]:
        raise RuntimeError(f"device {device.uid}: SUBACK {codes}")
    return client


async def mqtt_round_trips(
    cluster: RabbitCluster, device: Device, internal: tuple[str, str], n: int, pid: int
) -> Latencies:
    """The broker leg alone: an internal user on node C publishes a command (QoS 1) to the device on node A
    and waits for its reply (QoS 1), n times one after the other."""
    name, password = internal
    requester = MqttClient(name, name, password)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    requester.on_message = lambda c, topic, payload: got.put_nowait(payload)
    values: list[float] = []
    failures: Counter[str] = Counter()
    cpu, t_start = 0.0, time.perf_counter()
    try:
        outcome = await requester.connect(HOST, cluster.nodes[C].mqtt_port)
        if not outcome.ok:
            raise RuntimeError(f"internal user refused: {outcome.code}")
        requester.listen()
        if await requester.subscribe([(f"devices/{device.uid}/replies", 1)]) != [1]:
            raise RuntimeError("internal user: replies subscription refused")
        cpu0, t_start = cpu_seconds(pid), time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            requester.publish(f"devices/{device.uid}/commands", b'{"id":"rr%d","action":"ping","params":{}}' % i, 1)
            try:
                await asyncio.wait_for(got.get(), 10)
            except TimeoutError:
                failures["no reply in 10 s"] += 1
                break
            values.append((time.perf_counter() - t0) * 1000)
        # The platform's CPU meanwhile: its relay, subscribed to every device's replies, hears each one too.
        cpu = cpu_seconds(pid) - cpu0
    finally:
        await requester.disconnect()
    return Latencies(values, failures, time.perf_counter() - t_start, cpu / max(1, len(values)) * 1000)


async def bench_commands(
    plan: Plan, api: Api, world: World, cluster: RabbitCluster, platform: Platform,
    internal: list[tuple[str, str]], results: Results,
) -> None:  # fmt: skip
    devices = world.commands
    print(f"\n== 3. command round trip: POST /v1/devices/{{uid}}/commands → platform (connector on node C) → RabbitMQ"
          f" → {len(devices)} devices on node A → reply → HTTP (httpx.AsyncClient, keep-alive)")  # fmt: skip
    port_a = cluster.nodes[A].mqtt_port
    clients = await asyncio.gather(*(answering_device(port_a, d) for d in devices))
    try:
        if await api.until_online(world.admin, COMMAND_MODEL, len(devices), 15) is None:
            print("  ! not every command device is online for the platform after 15 s")
        first = devices[0].uid

        auth, pid, beams = (
            {"Authorization": f"Bearer {world.owner.token}"},
            platform.pid,
            [n.pid for n in cluster.nodes],
        )
        await timed_requests(api.http, [[command(first, i) for i in range(20)]], is_pong, pid, auth)  # warm-up
        await settle([pid, *beams])
        state = await timed_requests(
            api.http,
            [[("GET", f"/v1/devices/{first}/state", None)] * plan.commands_sequential],
            lambda b: True,
            pid,
            auth,
        )
        await settle([pid, *beams])
        seq = await timed_requests(
            api.http, [[command(first, i) for i in range(plan.commands_sequential)]], is_pong, pid, auth
        )
        await settle([pid, *beams])
        c50 = await timed_requests(
            api.http, [[command(d.uid, i) for i in range(plan.commands_each)] for d in devices], is_pong, pid, auth
        )
        await settle([pid, *beams])
        rr = await mqtt_round_trips(cluster, devices[0], internal[-1], plan.commands_sequential, pid)
    finally:
        for client in clients:
            await client.disconnect()
    print(seq.line("1 concurrent", server="platform", width=46))
    print(c50.line(f"50 concurrent, {len(devices)} devices", server="platform", width=46))
    print("  its parts, alone, 1 concurrent:")
    print(state.line("GET /v1/devices/{uid}/state (auth + 1 read)", server="platform", width=46))
    print(rr.line("MQTT request/reply C → A → C, internal user", server="platform", width=46))
    parts = state.p50 + rr.p50
    print(f"  1 concurrent: p50 < 10 ms {verdict(seq.p50 < 10)}; command p50 ÷ (HTTP alone + MQTT alone) p50 ="
          f" {seq.p50 / parts:4.2f}")  # fmt: skip
    results.add("3. command p50 / p99, 1 concurrent", f"{seq.p50:.1f} / {seq.p99:.1f} ms", "p50 < 10 ms", seq.p50 < 10)
    results.add("   50 concurrent, 50 devices", f"{c50.p50:.1f} / {c50.p99:.1f} ms, {c50.rate:.0f}/s")
    results.add("   parts: HTTP GET, MQTT alone", f"{state.p50:.1f} ms, {rr.p50:.1f} ms")


# --- 4. revocation to close -------------------------------------------------------------------------------


async def bench_revocations(
    plan: Plan, api: Api, world: World, cluster: RabbitCluster, watch: EventWatch, results: Results
) -> None:
    devices = world.revoke
    print(f"\n== 4. revocation-to-close: {len(devices)} devices over the 3 nodes, one disabled every {REVOKE_GAP} s;"
          f" then {len(world.logout)} users logging out, each with an MQTT connection on node B")  # fmt: skip
    ports = [node.mqtt_port for node in cluster.nodes]
    clients = [MqttClient(d.uid, d.uid, d.token) for d in devices]
    outcomes = await asyncio.gather(*(c.connect(HOST, ports[i % 3]) for i, c in enumerate(clients)))
    bad = Counter(str(o.code) for o in outcomes if not o.ok)
    if bad:
        raise RuntimeError(f"revocation devices refused: {codes_text(bad)}")
    for client in clients:
        client.listen()
    if await api.until_online(world.admin, REVOKE_MODEL, len(devices), 15) is None:
        why = await explain_missing(api, world.admin, REVOKE_MODEL, watch, {d.uid for d in devices})
        print(f"  ! after 15 s: {why}")
    loop = asyncio.get_running_loop()

    async def disable(i: int) -> float | None:
        await asyncio.sleep(i * REVOKE_GAP)
        t0 = loop.time()
        await api.call("POST", f"/v1/admin/devices/{devices[i].uid}/disable", token=world.admin, status=(200, 204))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(clients[i].closed.wait(), 3 * WITHIN)
        at = clients[i].closed_at
        return None if at is None else at - t0

    found = await asyncio.gather(*(disable(i) for i in range(len(devices))))
    for client in clients:
        client.drop()
    closed = sorted(v * 1000 for v in found if v is not None)
    late = sum(1 for v in found if v is None or v > WITHIN)

    people = world.logout
    users = [MqttClient(p.id, p.id, p.token) for p in people]
    for client in users:
        outcome = await client.connect(HOST, ports[B])
        if not outcome.ok:
            raise RuntimeError(f"user refused: {outcome.code}")
        client.listen()
    await asyncio.sleep(1.0)  # the connector has heard of them (connection.created)
    logouts: list[float] = []
    for person, client in zip(people, users, strict=True):
        t0 = loop.time()
        await api.call("POST", "/v1/auth/logout", token=person.token, status=(204,))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.closed.wait(), 3 * WITHIN)
        logouts.append(float("nan") if client.closed_at is None else (client.closed_at - t0) * 1000)
        client.drop()
    p50, p99 = percentile(closed, 0.5), percentile(closed, 0.99)
    print(f"  disable → connection closed: p50 {p50:6.0f} ms  p99 {p99:6.0f} ms  max {max(closed, default=float('nan')):6.0f} ms"
          f"  ({len(closed)} of {len(devices)} closed; {late} not within {WITHIN:.0f} s)   {verdict(late == 0)}")  # fmt: skip
    print(f"  logout → connection closed:  {', '.join(f'{v:.0f}' for v in logouts)} ms"
          f"   {verdict(all(v == v and v <= WITHIN * 1000 for v in logouts))}")  # fmt: skip
    results.add("4. disable → closed p50 / p99", f"{p50:.0f} / {p99:.0f} ms ({late} late)", "≤ 5 s", late == 0)
    ok = all(v == v and v <= WITHIN * 1000 for v in logouts)
    results.add(
        "   logout → closed", f"median {med(logouts):.0f} ms, max {max(logouts, default=0):.0f} ms", "≤ 5 s", ok
    )


# --- 2. the reconnect storm -------------------------------------------------------------------------------


async def bench_storm(
    plan: Plan, api: Api, world: World, cluster: RabbitCluster, platform: Platform, window: int,
    watch: EventWatch, results: Results,
) -> None:  # fmt: skip
    n = len(world.storm)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"\n== 2. reconnect storm: {n} devices over the 3 nodes; every socket dropped at once, every device reconnecting"
          f" at once (at most {window} CONNECTs in flight, back-off 0.5-5 s after a refusal); open files limit"
          f" {soft} (hard {hard})")  # fmt: skip
    if n + 200 > soft:
        print(f"  ! {n} sockets do not fit under the open files limit {soft}")
    ports = [node.mqtt_port for node in cluster.nodes]
    beams = [node.pid for node in cluster.nodes]
    storm = Fleet(world.storm, ports, window)
    loop = asyncio.get_running_loop()
    pinger = asyncio.create_task(storm.pinger())
    try:
        # The first wave: every device connects once (each token's first verification for most of them).
        first, wave = storm.wave(plan.storm_timeout)
        await wave
        up = first.last()
        seen = await api.until_online(world.admin, STORM_MODEL, n, plan.storm_timeout)
        print(f"  first connect: {first.done} of {n} CONNACK 0 in {up if up is not None else float('nan'):.1f} s"
              f" ({first.done / max(1e-9, up or plan.storm_timeout):.0f}/s); all online for the platform"
              f" {seen if seen is not None else float('nan'):.1f} s after"
              + (f"; refused on the way: {codes_text(first.refused)}" if first.refused else ""))  # fmt: skip
        if first.done < n or seen is None:
            live = {d.uid for d, c in zip(world.storm, storm.clients, strict=True) if c.connected}
            why = await explain_missing(api, world.admin, STORM_MODEL, watch, live)
            if why:
                print(f"  ! {why}")
            online = await api.online(world.admin, STORM_MODEL)
            results.add("2. storm", f"first wave incomplete: {first.done} CONNACK 0, {online} online", "≤ 40 s", False)
            return
        await settle([platform.pid, *beams], longest=10)

        before_conn = await api.events(world.admin, "device_connected")
        before_disc = await api.events(world.admin, "device_disconnected")
        posts0 = await api.post_requests()
        cpu0 = (cpu_seconds(platform.pid), sum(cpu_seconds(p) for p in beams), self_cpu())
        storm.drop_all()
        phase, wave = storm.wave(plan.storm_timeout)
        timeline: list[tuple[float, int, int, int, int]] = []  # t, CONNACKs, connected written, disconnected, online
        presence_at: float | None = None
        cpu_at_presence = cpu0
        while loop.time() - phase.started < plan.storm_timeout:
            online = await api.online(world.admin, STORM_MODEL)
            connected = await api.events(world.admin, "device_connected") - before_conn
            gone = await api.events(world.admin, "device_disconnected") - before_disc
            t = loop.time() - phase.started
            timeline.append((t, phase.done, connected, gone, online))
            if presence_at is None and phase.done == n and connected >= n and online == n:
                presence_at = t
                cpu_at_presence = (cpu_seconds(platform.pid), sum(cpu_seconds(p) for p in beams), self_cpu())
                break
            await asyncio.sleep(0.5)
        if presence_at is None:
            live = {d.uid for d, c in zip(world.storm, storm.clients, strict=True) if c.connected}
            why = await explain_missing(api, world.admin, STORM_MODEL, watch, live)
            if why:
                print(f"  ! {why}")
            cpu_at_presence = (cpu_seconds(platform.pid), sum(cpu_seconds(p) for p in beams), self_cpu())
        if not wave.done():
            await asyncio.wait_for(wave, timeout=max(1.0, plan.storm_timeout - (loop.time() - phase.started)))
        posts = await api.post_requests() - posts0
        connack_all = phase.last()
        kicked = storm.kicked()
        waits = sorted((t - phase.started) for t in phase.connacks if t is not None)
        cpu = [b - a for a, b in zip(cpu0, cpu_at_presence, strict=True)]
        print(
            "  the storm, t after the drop (s): CONNACK 0 / device_connected written / device_disconnected written"
            " / online"
        )
        step = max(1, len(timeline) // 12)
        for row in timeline[::step] + ([timeline[-1]] if (len(timeline) - 1) % step else []):
            print(f"    t={row[0]:5.1f}  {row[1]:6d} / {row[2]:6d} / {row[3]:6d} / {row[4]:6d}")
        connack_text = f"{connack_all:.1f} s" if connack_all is not None else f"NOT ALL ({phase.done} of {n})"
        presence_text = f"{presence_at:.1f} s" if presence_at is not None else f"NOT within {plan.storm_timeout:.0f} s"
        print(f"  every device CONNACK 0 again: {connack_text}  (each device's wait p50 {percentile(waits, 0.5):.1f} s,"
              f" p99 {percentile(waits, 0.99):.1f} s)")  # fmt: skip
        ok = presence_at is not None and presence_at <= 40
        print(f"  ... and presence right for all {n}: {presence_text}   target ≤ 40 s  {verdict(ok)}")
        print(f"  refused CONNECTs: {codes_text(phase.refused) if phase.refused else 'none'};"
              f" closed by the broker after CONNACK 0: {kicked}")  # fmt: skip
        if presence_at is not None:
            print(f"  CPU over those {presence_at:.1f} s (2 cores = {2 * presence_at:.0f} core-s): platform {cpu[0]:.1f} s,"
                  f" RabbitMQ nodes {cpu[1]:.1f} s, this benchmark's clients {cpu[2]:.1f} s;"
                  f" {posts / n:.1f} hook calls (POSTs) per device, {posts / max(1e-9, presence_at):.0f}/s;"
                  f" platform CPU {cpu[0] / n * 1e3:.2f} ms per reconnect (hooks + its disconnect and connect events)")  # fmt: skip
        results.add(f"2. storm: {n} devices CONNACK 0 again", connack_text)
        results.add("   ... and presence right", presence_text, "≤ 40 s", ok)
        if phase.refused:
            results.add("   refused on the way", codes_text(phase.refused))
        if presence_at is not None:
            results.add("   CPU s: platform / RabbitMQ / clients", f"{cpu[0]:.0f} / {cpu[1]:.0f} / {cpu[2]:.0f}")
    finally:
        pinger.cancel()
        t0 = loop.time()
        await storm.disconnect_all()
        online = await api.online(world.admin, STORM_MODEL)
        while online > 0 and loop.time() < t0 + 60:
            await asyncio.sleep(0.5)
            online = await api.online(world.admin, STORM_MODEL)
        print(f"  after all disconnected cleanly: {online} still marked online {loop.time() - t0:.0f} s later")
        if online:
            results.add("   left marked online", str(online), "0", False)


# --- the benchmark --------------------------------------------------------------------------------------


async def run_backend(
    plan: Plan, platform: Platform, cluster: RabbitCluster, internal: list[tuple[str, str]], window: int
) -> Results:
    results = Results(platform.backend)
    api = Api(platform.base_url)
    watch = EventWatch()
    try:
        await watch.start(cluster.amqp_url(A))
        t0 = time.monotonic()
        world = await prepare_world(api, platform, plan)
        total = len(world.storm) + len(world.commands) + len(world.revoke)
        retried = f"; answered 503 and retried: {dict(api.retries)}" if api.retries else ""
        print(f"setup: {total} devices provisioned and given a token, {len(world.commands)} bound, "
              f"{1 + len(world.logout)} users, in {time.monotonic() - t0:.0f} s{retried}")  # fmt: skip
        results.add("setup (provision + tokens)", f"{total} devices in {time.monotonic() - t0:.0f} s")
        await bench_connects(plan, api, world, cluster, platform, internal, watch, results)
        await bench_commands(plan, api, world, cluster, platform, internal, results)
        await bench_revocations(plan, api, world, cluster, watch, results)
        await bench_storm(plan, api, world, cluster, platform, window, watch, results)
    finally:
        await watch.aclose()
        await api.aclose()
    return results


def print_table(all_results: list[Results]) -> None:
    names: list[str] = []
    for r in all_results:
        names += [name for name in r.rows if name not in names]
    width = max(28, *(len(r.backend) for r in all_results))
    print("\n== summary")
    print(f"  {'':<40} " + " ".join(f"{r.backend:<{width}}" for r in all_results) + "  target")
    for name in names:
        cells, target = [], ""
        for r in all_results:
            figure, goal, ok = r.rows.get(name, ("—", "", None))
            target = target or goal
            cells.append(f"{figure}{'' if ok is None else ('  ok' if ok else '  MISSED')}")
        print(f"  {name:<40} " + " ".join(f"{c:<{width}}" for c in cells) + f"  {target}")


def rabbitmq_missing() -> str | None:
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not os.access(RABBITMQ_BIN / tool, os.X_OK):
            return f"RabbitMQ is not installed: no {RABBITMQ_BIN / tool} (apt-get install rabbitmq-server)"
    if shutil.which("erl") is None:
        return "Erlang is not installed: no erl on PATH (apt-get install rabbitmq-server)"
    return None


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="sqlite")
    parser.add_argument("--devices", type=int, help="devices in the reconnect storm (default 10000; --quick 600)")
    parser.add_argument("--window", type=int, default=300, help="CONNECTs in flight at once in the storm (300)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--logs", metavar="DIR", help="copy the platform's and the RabbitMQ nodes' logs there")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.devices is not None:
        plan = dataclasses.replace(plan, devices=max(args.devices, plan.connect_per_run))
    missing = rabbitmq_missing()
    if missing:
        print(f"bench.rabbitmq: {missing}", file=sys.stderr)
        sys.exit(2)
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    budget = plan.budget_base + plan.budget_per_backend * len(backends)
    soft, hard = raise_fd_limit()
    started = time.monotonic()
    set_time_limit(budget)  # whatever happens, the finally blocks stop the server and cluster
    print(f"bench.rabbitmq{' --quick' if args.quick else ''} --backend {args.backend}: {load_note()};"
          f" open files {soft}/{hard}; hard time limit {budget:.0f} s")  # fmt: skip
    all_results: list[Results] = []
    with tempfile.TemporaryDirectory(prefix="handshake-bench-rabbit-") as tmp:
        workdir = Path(tmp)
        port = free_port()  # the platform's: RabbitMQ's auth backend URL is fixed when the nodes start
        cluster = RabbitCluster(hook_base=f"http://{HOST}:{port}", secret="bench-" + secrets.token_urlsafe(24),
                                nodes=3, root=workdir / "rabbit")  # fmt: skip
        try:
            try:
                cluster.start(timeout=150)
            except RabbitUnavailableError as exc:
                print(f"bench.rabbitmq: {exc.reason.splitlines()[0]}", file=sys.stderr)
                sys.exit(2)
            internal = add_internal_users(cluster, plan.connect_per_run + 1, workdir)
            print(f"cluster: 3 nodes up in {cluster.started_in:.0f} s; {len(internal)} internal users imported")
            for backend in backends:
                print(f"\n######## backend: {backend}")
                with running_platform(backend, cluster, port, workdir / backend) as platform:
                    with asyncio.Runner(loop_factory=new_loop) as runner:
                        all_results.append(runner.run(run_backend(plan, platform, cluster, internal, args.window)))
        finally:
            set_time_limit(0)
            cluster.stop()
            for path in rabbit_logs(cluster):
                found = log_lines(path, lambda line: bool(RABBIT_PROBLEM.search(line)))
                print_log_summary(f"RabbitMQ {path.stem}", found, top=6)
            if args.logs:
                keep = Path(args.logs)
                keep.mkdir(parents=True, exist_ok=True)
                for path in [*rabbit_logs(cluster), *workdir.glob("*/server.log")]:
                    with contextlib.suppress(OSError):
                        shutil.copy(
                            path,
                            keep / (path.parent.name + "-" + path.name if path.name == "server.log" else path.name),
                        )
                print(f"logs copied to {keep}")
    if all_results:
        print_table(all_results)
    print(f"\n{load_note()}; total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
