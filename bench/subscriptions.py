"""Delivery cost with idle subscriptions (PERF §4): messages/s publisher → subscriber with none and with 1,000
subscriptions on other devices' topics (the owner subscribed to 200 other devices it owns, 5 filters each), on
our embedded broker and on bare amqtt's `Broker` (bench/_mqtt_baseline.py), alternated in this one run. Cost
ratio by rate and by the broker's CPU per message; target ≤ 1.5× (stock amqtt: ~4×). Part 3 of PERF §4's MQTT
benchmarks (all four: `python -m bench.mqtt`).

Run from the repository root:  .venv/bin/python -m bench.subscriptions [--quick] [--backend sqlite|postgres]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # As a script, bench/ would come first on sys.path and bench/http.py would shadow the standard library.
    sys.exit("run me as a module from the repository root: python -m bench.subscriptions")

import contextlib
from collections.abc import Iterator

import paho.mqtt.client as mqtt

from bench._brokers import Target
from bench._flow import Endpoint, endpoints, flow_run
from bench._paho import close, connect_blocking, new_client, subscribe_blocking
from bench._rig import Part, Rig, main
from bench._stats import Rate, med, rate_line, rounds, verdict


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


def bench_idle(rig: Rig) -> None:
    plan, world, ours, amqtt = rig.plan, rig.world, rig.ours, rig.amqtt
    pub, sub, user, topic = endpoints(world)
    uids = [d.uid for d in world.idle_devices]
    n = plan.idle_messages
    print(f"\n== 3. delivery cost with idle subscriptions: {len(uids) * 5} filters on {len(uids)} other devices the"
          f" owner owns ({plan.idle_clients} connections), QoS 0, {n} messages per run")  # fmt: skip
    results: dict[tuple[str, bool], list[Rate]] = {(k, idle): [] for k in ("amqtt", "ours") for idle in (False, True)}
    pids = rig.pids
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


PART = Part("idle", bench_idle)

if __name__ == "__main__":
    main([PART], "bench.subscriptions", __doc__)
