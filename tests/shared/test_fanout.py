"""Fan-out over Redis between processes (two Fanouts on one prefix stand for two processes): a batch of
messages crosses as one Redis message per BATCH, and arrives as the same messages, in order."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.fanout import BATCH, Fanout
from tests.conftest import REDIS_URL, _unavailable
from tests.device_connector.helpers import eventually


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        _unavailable(f"Redis at {REDIS_URL} is not reachable: {exc}")
    yield client
    await client.aclose()


async def test_many_messages_cross_as_few_redis_messages_and_arrive_in_order(redis_client: aioredis.Redis) -> None:
    prefix = f"hs-test-{secrets.token_hex(4)}:"
    sender = Fanout(redis_client, prefix=prefix)
    receiver = Fanout(aioredis.Redis.from_url(REDIS_URL), prefix=prefix)
    got: list[dict[str, Any]] = []
    receiver.subscribe("events", got.append)
    wire = redis_client.pubsub()
    await wire.psubscribe(prefix + "*")
    await receiver.start()
    try:
        assert receiver.connected
        count = 2 * BATCH + 7
        await sender.publish_many("events", [{"n": i} for i in range(count)])
        await sender.publish("events", {"n": count})  # one message alone, as before
        assert await eventually(lambda: len(got) == count + 1)
        assert got == [{"n": i} for i in range(count + 1)]
        crossed = 0
        loop = asyncio.get_running_loop()
        quiet_from = loop.time() + 0.5  # read until nothing more came for half a second
        while loop.time() < quiet_from:
            message = await wire.get_message(timeout=0.1)
            if message is not None and message["type"] == "pmessage":
                crossed += 1
                quiet_from = loop.time() + 0.5
        assert crossed == 4  # three for the batch (BATCH, BATCH, 7), one for the message alone
    finally:
        await receiver.stop()
        await wire.aclose()
        assert receiver.redis is not None
        await receiver.redis.aclose()
