"""CONNECT+DISCONNECT/s of devices with a JWT through the real platform (`handshake serve` in a subprocess, devices
provisioned over the API, device tokens fetched beforehand) beside bare amqtt's `Broker` (bench/_mqtt_baseline.py),
and Mosquitto on 127.0.0.1:1883 for the record, every figure a ratio of runs alternated in this one run (medians,
PERF §6). Part 1 of PERF §4's MQTT benchmarks (all four: `python -m bench.mqtt`).

Ours with a fresh token per connect (signature verified) and with a reused one (verified-token cache). Target
≥ 0.8×. Our figure comes twice: as the clients saw it (CONNACK, DISCONNECT), and until the platform had also
written each connect's and disconnect's presence and event (the rate it can sustain; counted through the admin
API, the platform's own CPU for those polls left out); then a sustained run of many connects. Devices left
marked online afterwards are reported. The broker process's own CPU time per operation (from /proc, 10 ms
ticks) is printed beside each rate: on a shared, noisy machine it moves less than throughput does.

Run from the repository root:  .venv/bin/python -m bench.connect [--quick] [--backend sqlite|postgres]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # As a script, bench/ would come first on sys.path and bench/http.py would shadow the standard library.
    sys.exit("run me as a module from the repository root: python -m bench.connect")

import threading
import time
from collections import Counter

import httpx

from bench._brokers import Target
from bench._paho import SUCCESS, connect_disconnect
from bench._proc import cpu_seconds, settle
from bench._rig import CONNECT_MODEL, Part, Rig, main
from bench._stats import DRAIN_TIMEOUT, Rate, rate_line, ratio_line, rounds


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
        ok / elapsed, ok, cpu / max(1, ok) * 1e6, refused=refused, drained_per_s=drained_rate, unwritten=int(undrained)
    )


def bench_connects(rig: Rig) -> None:
    plan, world, ours, amqtt, mosq = rig.plan, rig.world, rig.ours, rig.amqtt, rig.mosquitto
    print(f"\n== 1. CONNECT+DISCONNECT/s: {len(world.connect_devices)} devices per run, {plan.connect_threads} paho"
          f" clients at a time (TCP_NODELAY), clean sessions")  # fmt: skip
    uids = [d.uid for d in world.connect_devices]
    warm = [(u, u, t) for u, t in zip(uids, world.warm_tokens, strict=True)]
    pids = rig.pids
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


PART = Part("connect", bench_connects)

if __name__ == "__main__":
    main([PART], "bench.connect", __doc__)
