"""Benchmark helper: numbered messages from a publisher to a subscriber through one broker (bench/throughput.py,
bench/subscriptions.py). Every 100-byte payload carries its number, so losses and duplicates are counted; the
broker's CPU per message comes from /proc."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from bench._brokers import Target
from bench._paho import close, connect_blocking, new_client, subscribe_blocking
from bench._proc import HOST, cpu_seconds
from bench._rig import World
from bench._stats import Rate

PAYLOAD_BYTES = 100
IDLE_GAP = 3.0  # a flow run ends when nothing has arrived for this long


def payload(seq: int) -> bytes:
    head = b"%08d " % seq
    return head + b"x" * (PAYLOAD_BYTES - len(head))


@dataclass
class Endpoint:
    client_id: str
    username: str
    password: str


def endpoints(world: World) -> tuple[Endpoint, Endpoint, Endpoint, str]:
    """The publisher (a device), its owner's subscriber, the owner as a user, and the device's events topic."""
    uid = world.publisher.uid
    pub = Endpoint(uid, uid, world.publisher_token)
    sub = Endpoint(f"{world.user_id}-sub", world.user_id, world.user_token)
    user = Endpoint(world.user_id, world.user_id, world.user_token)
    return pub, sub, user, f"devices/{uid}/events"


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
            got,
            cpu / max(1, got) * 1e6,
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
