"""Benchmark helper: a fleet of devices on raw asyncio MQTT clients (bench/_rabbit_clients.py), thousands in one
event loop, for reconnect storms (bench/storm.py, bench/rabbitmq.py). A wave connects every device at once, at most
`window` CONNECTs in flight, each retrying a refusal after a jittered back-off as the SDK does; its `Phase` says
when each one got its CONNACK 0 and what was refused on the way."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

from bench._api import Device, bounded
from bench._proc import HOST
from bench._rabbit_clients import MqttClient

KEEPALIVE = 120  # s; the fleet's clients send a PINGREQ every PING_EVERY s (`pinger`)
PING_EVERY = 45.0


@dataclass
class Phase:
    """One wave of N connects: when each got its CONNACK 0, and what was refused on the way."""

    started: float
    connacks: list[float | None]
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def done(self) -> int:
        return sum(1 for t in self.connacks if t is not None)

    def last(self) -> float | None:
        times = [t for t in self.connacks if t is not None]
        return max(times) - self.started if len(times) == len(self.connacks) else None


class Fleet:
    """One client per device, each on the broker port `i % len(ports)`."""

    def __init__(self, devices: list[Device], ports: list[int], window: int) -> None:
        self.devices = devices
        self.ports = ports
        self.window = asyncio.Semaphore(window)
        self.clients = [MqttClient(d.uid, d.uid, d.token, keepalive=KEEPALIVE) for d in devices]

    async def _bring_up(self, i: int, phase: Phase, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        client, delay = self.clients[i], 0.5
        while loop.time() < deadline:
            async with self.window:
                outcome = await client.connect(HOST, self.ports[i % len(self.ports)], timeout=30)
            if outcome.ok:
                client.listen()
                phase.connacks[i] = loop.time()
                return
            phase.refused[str(outcome.code)] += 1
            await asyncio.sleep(delay * (0.5 + random.random()))  # a device's back-off, jittered
            delay = min(5.0, delay * 2)

    def wave(self, timeout: float) -> tuple[Phase, asyncio.Future[list[None]]]:
        loop = asyncio.get_running_loop()
        phase = Phase(loop.time(), [None] * len(self.clients))
        deadline = phase.started + timeout
        return phase, asyncio.gather(*(self._bring_up(i, phase, deadline) for i in range(len(self.clients))))

    def drop_all(self) -> None:
        for client in self.clients:
            client.drop()

    def kicked(self) -> int:
        """Connections the broker closed after their CONNACK 0."""
        return sum(1 for c in self.clients if c.writer is not None and c.closed.is_set())

    async def pinger(self) -> None:
        while True:
            await asyncio.sleep(PING_EVERY)
            for client in self.clients:
                if client.connected:
                    client.ping()

    async def disconnect_all(self) -> None:
        await bounded(500, [client.disconnect for client in self.clients if client.writer is not None])
