"""Messages/s publisher → subscriber through our embedded broker (JWT at CONNECT, topic ACL both ways) beside bare
amqtt's `Broker` (bench/_mqtt_baseline.py), and Mosquitto on 127.0.0.1:1883 for the record, alternated in this one
run (medians, PERF §6). Part 2 of PERF §4's MQTT benchmarks (all four: `python -m bench.mqtt`).

100-byte numbered payloads, QoS 0 and QoS 1: a device publishes on devices/{uid}/events and its owner subscribes;
the same clients and topics on bare amqtt and Mosquitto. Every message is numbered: losses and duplicates are
counted. Then QoS 1 while other clients keep subscribing and disconnecting (PERF §5: stock amqtt with a topic
plugin loses messages there). Target ≥ 0.8× bare amqtt, zero lost.

Run from the repository root:  .venv/bin/python -m bench.throughput [--quick] [--backend sqlite|postgres]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # As a script, bench/ would come first on sys.path and bench/http.py would shadow the standard library.
    sys.exit("run me as a module from the repository root: python -m bench.throughput")

import threading
import time
from collections.abc import Callable

from bench._brokers import Target
from bench._flow import PAYLOAD_BYTES, Endpoint, endpoints, flow_run
from bench._paho import close, connect_blocking, new_client, subscribe_blocking
from bench._rig import Part, Rig, main
from bench._stats import Rate, rate_line, ratio_line, rounds, verdict


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


def bench_flows(rig: Rig) -> None:
    plan, world, ours, amqtt, mosq = rig.plan, rig.world, rig.ours, rig.amqtt, rig.mosquitto
    pub, sub, user, topic = endpoints(world)
    print(f"\n== 2. publisher → subscriber: {PAYLOAD_BYTES}-byte numbered messages on devices/{{uid}}/events (a device"
          f" → its owner); QoS 0: {plan.qos0_messages}, QoS 1: {plan.qos1_messages} per run (publisher: 50 in"
          f" flight)")  # fmt: skip
    targets = [("amqtt", amqtt), ("ours", ours)] + ([("mosquitto", mosq)] if mosq is not None else [])
    pids = rig.pids
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


PART = Part("flow", bench_flows)

if __name__ == "__main__":
    main([PART], "bench.throughput", __doc__)
