"""Benchmark helper: the platform's HTTP API as a benchmark's set-up and load use it. An asyncio client that
retries a 503 (`Api`), the same for threads (`ApiPool`), provisioning in batches, jobs run a few at a time,
and timed request sequences run concurrently (latencies, failures, the server's CPU meanwhile)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from bench._proc import VOLATILE, cpu_seconds
from bench._stats import Latencies

BATCH = 500  # devices per POST /v1/admin/devices
RETRIES = 6  # attempts of a request answered 503 (the platform not ready for a moment)


@dataclass
class Device:
    uid: str
    secret: str
    claim_code: str
    token: str = ""


def devices_of(body: dict[str, Any]) -> list[Device]:
    """The devices in a POST /v1/admin/devices answer."""
    return [Device(d["uid"], d["secret"], d["claim_code"]) for d in body["devices"]]


def batches(n: int) -> list[int]:
    """Sizes of the provisioning requests for n devices."""
    return [min(BATCH, n - start) for start in range(0, n, BATCH)]


def ok_json(response: httpx.Response, what: str, status: tuple[int, ...] = (200,)) -> Any:
    if response.status_code not in status:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")
    return response.json() if response.content else None


async def bounded(limit: int, jobs: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Every job, at most `limit` at a time; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(one(job) for job in jobs)))


class Api:
    """One keep-alive asyncio client; `retries` counts the 503s it retried (set-up under load)."""

    def __init__(self, base_url: str) -> None:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        self.http = httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits)
        self.retries: Counter[str] = Counter()

    async def call(
        self, method: str, path: str, *, body: Any = None, token: str | None = None, status: tuple[int, ...] = (200,)
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        for attempt in range(RETRIES):
            response = await self.http.request(method, path, json=body, headers=headers)
            if response.status_code == 503 and attempt < RETRIES - 1:
                self.retries[f"{method} {path.split('/')[2]} 503"] += 1
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            return ok_json(response, f"{method} {path}", status)
        raise AssertionError("unreachable")

    async def login(self, username: str, password: str) -> str:
        """An access token from a real login."""
        body = await self.call("POST", "/v1/auth/login", body={"username": username, "password": password})
        return str(body["access_token"])

    async def provision(self, admin: str, model: str, n: int) -> list[Device]:
        """n devices of `model`. Each batch's claim codes are hashed across the server's hashing pool: two
        batches at a time keep both of its workers busy."""
        jobs = [
            partial(
                self.call,
                "POST",
                "/v1/admin/devices",
                body={"model": model, "count": count},
                token=admin,
                status=(201,),
            )
            for count in batches(n)
        ]
        return [device for body in await bounded(2, jobs) for device in devices_of(body)]

    async def total(self, path: str, token: str, **params: str | int) -> int:
        response = await self.http.get(
            path, params={**params, "limit": 1}, headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code != 200:
            return -1
        return int(response.headers.get("X-Total-Count", -1))

    async def online(self, token: str, model: str) -> int:
        return await self.total("/v1/admin/devices", token, online="true", model=model)

    async def until_online(self, token: str, model: str, n: int, timeout: float) -> float | None:  # noqa: ASYNC109 - past it, answers None
        """Seconds until the platform says `n` devices of `model` are online; None if not within `timeout`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if await self.online(token, model) >= n:
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        return None

    async def events(self, token: str, type_: str) -> int:
        return await self.total("/v1/admin/events", token, type=type_)

    async def post_requests(self) -> float:
        """POST requests answered so far, from /metrics: nearly all of them hook calls during a storm."""
        text = (await self.http.get("/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("handshake_http_requests_total{") and 'method="POST"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def aclose(self) -> None:
        await self.http.aclose()


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
        for attempt in range(RETRIES):
            response = client.post(path, json=body, headers=headers)
            if response.status_code != 503 or attempt == RETRIES - 1:
                return ok_json(response, what, (status,))
            self.retries[f"{path} 503"] += 1
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items))

    def close(self) -> None:
        self.pool.shutdown()
        for client in self.clients:
            client.close()


Request = tuple[str, str, dict[str, Any] | None]  # method, path, JSON body


def command(uid: str, i: int) -> Request:
    """A `ping` command with its number, answered within 10 s."""
    return ("POST", f"/v1/devices/{uid}/commands", {"action": "ping", "params": {"i": i}, "timeout": 10})


def is_pong(body: Any) -> bool:
    return isinstance(body, dict) and body.get("status") == "ok" and bool((body.get("result") or {}).get("pong"))


async def timed_requests(
    http: httpx.AsyncClient,
    jobs: list[list[Request]],
    check: Callable[[Any], bool],
    pid: int | None = None,
    headers: dict[str, str] | None = None,
) -> Latencies:
    """Each inner list is one task's sequence of requests; the tasks run concurrently. A request succeeds
    with a 200 whose JSON body `check` accepts; `pid`'s CPU meanwhile is spread over the successes."""
    values: list[float] = []
    failures: Counter[str] = Counter()

    async def task(sequence: list[Request]) -> None:
        for method, path, body in sequence:
            t0 = time.perf_counter()
            try:
                response = await http.request(method, path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code != 200 or not check(response.json()):
                failures[f"{response.status_code} {VOLATILE.sub('#', response.text[:70])}"] += 1
                continue
            values.append(elapsed)

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(task(sequence) for sequence in jobs))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return Latencies(values, failures, wall, cpu / max(1, len(values)) * 1000)
