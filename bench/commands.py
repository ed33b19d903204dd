"""HTTP command round trip (PERF §4): POST /v1/devices/{uid}/commands → our embedded broker → SDK DeviceClient →
reply → HTTP, p50 and p99 at 1 and at 50 concurrent commands (50 devices, and one device), beside its parts
measured alone: an authenticated GET with one database read, and an MQTT request/reply through bare amqtt
(bench/_mqtt_baseline.py). Target at 1 concurrent: p50 < 10 ms, p99 < 50 ms; at 50 concurrent ≥ 0.3× GET /healthz
with the same client, p99 < 250 ms, also measured with wrk when it is installed. The SDK devices run in a child
process of their own. Part 4 of PERF §4's MQTT benchmarks (all four: `python -m bench.mqtt`).

Run from the repository root:  .venv/bin/python -m bench.commands [--quick] [--backend sqlite|postgres]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # As a script, bench/ would come first on sys.path and bench/http.py would shadow the standard library.
    sys.exit("run me as a module from the repository root: python -m bench.commands")

import asyncio
import contextlib
import json
import select
import shutil
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from bench._api import Device, command, is_pong, timed_requests
from bench._brokers import Platform, Target
from bench._paho import close, connect_blocking, new_client, subscribe_blocking
from bench._proc import STARTUP_TIMEOUT, Child, clean_env, cpu_seconds, settle
from bench._rig import Part, Rig, main
from bench._server import probe_figures
from bench._stats import Latencies, verdict


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
    """`python -m bench.commands --sdk-devices`: reads {base_url, mqtt_port, devices: [[uid, secret]...]} as one
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
    command = [sys.executable, "-m", "bench.commands", "--sdk-devices"]
    child = Child(
        "SDK devices", command, clean_env(), workdir / "devices.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE
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


def bench_commands(rig: Rig) -> None:
    plan, platform, world, amqtt, workdir = rig.plan, rig.platform, rig.world, rig.amqtt, rig.workdir
    devices = world.idle_devices[: plan.command_devices]
    print(f"\n== 4. HTTP command round trip: POST /v1/devices/{{uid}}/commands → broker → SDK DeviceClient → reply"
          f" (httpx.AsyncClient; {len(devices)} SDK devices in a child process)")  # fmt: skip
    platform.wait_ready()
    devices_child = start_sdk_devices(platform, devices, workdir)
    pid = platform.child.pid
    try:
        auth = {"Authorization": f"Bearer {world.user_token}"}

        async def run() -> dict[str, Latencies]:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=platform.base_url, headers=auth, timeout=30, limits=limits) as http:
                first = devices[0].uid
                await timed_requests(http, [[command(first, i) for i in range(20)]], is_pong)  # warm-up
                out: dict[str, Latencies] = {}
                settle([pid])
                out["state"] = await timed_requests(
                    http,
                    [[("GET", f"/v1/devices/{first}/state", None)] * plan.commands_sequential],
                    lambda b: True,
                    pid,
                )
                settle([pid])
                out["seq"] = await timed_requests(
                    http, [[command(first, i) for i in range(plan.commands_sequential)]], is_pong, pid
                )
                settle([pid])
                out["c50"] = await timed_requests(
                    http, [[command(d.uid, i) for i in range(plan.commands_each)] for d in devices], is_pong, pid
                )
                settle([pid])
                out["c50same"] = await timed_requests(
                    http, [[command(first, i) for i in range(plan.commands_each_same)] for _ in range(50)], is_pong, pid
                )
                settle([pid])
                # The floor, with the same client and concurrency (issue 11: commands ≥ 0.3× of it).
                out["healthz"] = await timed_requests(
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

    print(found["seq"].line("1 concurrent"))
    print(found["c50"].line(f"50 concurrent, {len(devices)} devices"))
    print(found["c50same"].line("50 concurrent, one device"))
    print(found["healthz"].line("GET /healthz, 50 concurrent (the floor)"))
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
    print(found["state"].line("GET /v1/devices/{uid}/state (auth + 1 read)"))
    print(rr.line("MQTT request/reply, bare amqtt (its CPU)"))
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


PART = Part("commands", bench_commands)

if __name__ == "__main__":
    if sys.argv[1:] == ["--sdk-devices"]:  # the child of start_sdk_devices
        sdk_devices_child()
    else:
        main([PART], "bench.commands", __doc__)
