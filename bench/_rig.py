"""Benchmark helper: the rig the MQTT benchmarks (bench/connect.py, throughput.py, subscriptions.py, commands.py,
and bench/mqtt.py for all of them) share. The platform and bare amqtt started, Mosquitto found, the users,
devices and tokens made over the API (the `World`), the sizes of a full and of a --quick run (the `Plan`),
then each benchmark's part run in turn; whatever was started is stopped and its log summarised on the way out,
within a hard time limit."""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench._api import ApiPool, Device, batches, devices_of, ok_json
from bench._brokers import Platform, Target, mosquitto_target, serving, start_amqtt
from bench._proc import set_time_limit
from bench._server import BACKENDS, PASSWORD, load_note

BOUND_MODEL, CONNECT_MODEL = "bench", "bench-connect"


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
# A short run: fewer connecting devices, messages, commands and rounds; the same clients and subscriptions.
QUICK = dataclasses.replace(
    FULL, connect_devices=100, connect_rounds=1, sustain_passes=2, flow_rounds=1,
    qos0_messages=2_000, qos1_messages=1_000, churn_messages=1_000, idle_messages=1_000, idle_rounds=1,
    commands_sequential=60, commands_each=2, commands_each_same=2,
    run_timeout=12.0, connect_time=10.0, flow_time=25.0, idle_time=15.0, budget=180.0,
)  # fmt: skip


# --- the platform's data: users, devices, tokens --------------------------------------------------------


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


def prepare_world(platform: Platform, plan: Plan) -> World:
    rounds = plan.connect_rounds
    retries: Counter[str] = Counter()
    with httpx.Client(base_url=platform.base_url, timeout=60) as http:
        login = {"username": "admin", "password": platform.admin_password}
        admin = ok_json(http.post("/v1/auth/login", json=login), "admin login")["access_token"]
        username = f"bench-owner-{secrets.token_hex(3)}"
        register = {"username": username, "password": PASSWORD}
        ok_json(http.post("/v1/auth/register", json=register), "register", (201,))
        login = {"username": username, "password": PASSWORD}
        user_token = ok_json(http.post("/v1/auth/login", json=login), "login")["access_token"]
        auth = {"Authorization": f"Bearer {user_token}"}
        user_id = ok_json(http.get("/v1/users/me", headers=auth), "users/me")["id"]

    api = ApiPool(platform.base_url, 3, retries)
    try:
        # Provisioning hashes each batch's claim codes in one call of the hashing pool: two batches at
        # once keep both of its workers busy.
        # The connecting devices get a model of their own: "how many of them are still online" tells when
        # the platform has written their presence (see bench/connect.py).
        admin_auth = {"Authorization": f"Bearer {admin}"}
        jobs = [
            (model, half)
            for model, wanted in ((BOUND_MODEL, 1 + plan.idle_devices), (CONNECT_MODEL, plan.connect_devices))
            for size in batches(wanted)
            for half in (size - size // 2, size // 2)
            if half
        ]
        bodies = api.map(
            lambda job: api.post("/v1/admin/devices", {"model": job[0], "count": job[1]}, admin_auth, 201, "provision"),
            jobs,
        )
        made: dict[str, list[Device]] = {BOUND_MODEL: [], CONNECT_MODEL: []}
        for (model, _), body in zip(jobs, bodies, strict=True):
            made[model] += devices_of(body)
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


# --- the run --------------------------------------------------------------------------------------------


@dataclass
class Rig:
    """What every part gets: the sizes, the data, ours, bare amqtt, Mosquitto (None: not on this machine)."""

    plan: Plan
    world: World
    platform: Platform
    ours: Target
    amqtt: Target
    mosquitto: Target | None
    workdir: Path

    @property
    def pids(self) -> list[int | None]:
        """The two brokers compared: each run waits until both are quiet."""
        return [self.ours.pid, self.amqtt.pid]


@dataclass(frozen=True)
class Part:
    name: str  # as `python -m bench.mqtt --only` names it
    run: Callable[[Rig], None]


def run_parts(parts: list[Part], plan: Plan, backend: str, title: str) -> None:
    started = time.monotonic()
    set_time_limit(plan.budget)  # whatever happens, the finally below stops every child
    if "connect" not in {part.name for part in parts}:
        plan = dataclasses.replace(plan, connect_devices=0)  # nobody else connects them: none made
    print(f"{title} ({backend}): {load_note()}")
    with serving(backend, "mqtt") as (platform, _, workdir):
        try:
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
            rig = Rig(plan, world, platform, ours, amqtt, mosquitto_target(), workdir)
            for part in parts:
                part.run(rig)
            if platform.not_ready:
                waits = ", ".join(f"{s:.1f}" for s in platform.not_ready)
                print(
                    f"\n! the platform's /readyz failed before {len(platform.not_ready)} of our runs; waited {waits} s"
                )
        finally:
            set_time_limit(0)  # before the children are stopped: their stopping is not cut short
    print(f"\ntotal {time.monotonic() - started:.0f} s")


def main(parts: list[Part], title: str, doc: str | None) -> None:
    """The command line of one benchmark (or, with several parts, of bench.mqtt: --only chooses)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (fewer devices, messages and rounds)")
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite", help="the platform's storage (default sqlite)")
    if len(parts) > 1:
        names = [part.name for part in parts]
        parser.add_argument("--only", choices=names, action="append", help="run only these parts")
    args = parser.parse_args()
    only = getattr(args, "only", None)
    chosen = [part for part in parts if not only or part.name in only]
    run_parts(chosen, QUICK if args.quick else FULL, args.backend, title + (" --quick" if args.quick else ""))
