"""Fan-out of small JSON messages to every process: in-process callbacks, or Redis pub/sub when
HANDSHAKE_REDIS_URL is set. Pub/sub keeps nothing for a subscriber that was away, so whoever relies
on it also reconciles with the database (shared.revocation does)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from shared import background

CLOSE_TIMEOUT = 2.0  # s for the subscription to close on the way out
BATCH = 500  # messages at most in one Redis message of publish_many (a few hundred KB of events)

log = logging.getLogger("handshake.fanout")

Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class Fanout:
    def __init__(self, redis: aioredis.Redis | None, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._handlers: dict[str, list[Handler]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()  # set while the Redis subscription is up
        if redis is None:
            self._subscribed.set()
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []

    @property
    def connected(self) -> bool:
        """False while the Redis subscription is down: messages may be passing us by."""
        return self._subscribed.is_set()

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def unsubscribe(self, channel: str, handler: Handler) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._handlers[channel].remove(handler)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        if self.redis is None:
            await self._dispatch(channel, message)
            return
        await self.redis.publish(self.prefix + channel, orjson.dumps(message))

    async def publish_many(self, channel: str, messages: list[dict[str, Any]]) -> None:
        """Several messages, in order, as one Redis message each BATCH of them (a JSON list), which
        every process takes apart again: a storm's thousands of events were a PUBLISH each, and each
        came back to every process as a message of its own for redis-py to parse (issue 11: 8% of the
        event loop in a reconnect storm on PostgreSQL + Redis)."""
        if self.redis is None:
            for message in messages:
                await self._dispatch(channel, message)
            return
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip, as before
            for start in range(0, len(messages), BATCH):
                pipe.publish(self.prefix + channel, orjson.dumps(messages[start : start + BATCH]))
            await pipe.execute()

    async def _dispatch(self, channel: str, message: dict[str, Any]) -> None:
        for handler in list(self._handlers.get(channel, ())):
            try:
                result = handler(message)
                if result is not None:
                    await result
            except Exception:
                log.exception("fan-out handler for %s failed", channel)

    async def start(self, *, wait: float = 5.0) -> None:
        """Subscribe; wait (a bounded time) for the first subscription, so a process that has just
        started does not answer 503 to its first requests while it catches up."""
        if self.redis is not None and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="handshake-fanout")
            subscribed = asyncio.ensure_future(self._subscribed.wait())
            try:
                await asyncio.wait((subscribed, self._task), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                subscribed.cancel()

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None

    async def _listen(self) -> None:
        assert self.redis is not None
        pattern = self.prefix + "*"
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(pattern)
                background.honour_cancel()
                # Catch up on what passed us by (from the database) before anyone trusts us again.
                for callback in self.on_reconnect:
                    await callback()
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    background.honour_cancel()
                    if message is None or message.get("type") != "pmessage":
                        continue
                    channel = message["channel"].decode()[len(self.prefix) :]
                    try:
                        body = orjson.loads(message["data"])
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(body, list):  # publish_many's: the messages in order
                        for each in body:
                            if isinstance(each, dict):
                                await self._dispatch(channel, each)
                        # A turn for whoever reads what was just handed on (a live feed's queue holds
                        # 1,000) before the next batch, which may be waiting in the buffer already.
                        await asyncio.sleep(0)
                    elif isinstance(body, dict):
                        await self._dispatch(channel, body)
            except asyncio.CancelledError:
                self._subscribed.clear()
                # Bounded: cancelled while subscribing, redis-py's close can wait on the connection that
                # subscribe was still opening, and a stop must end.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis-py 8
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("Redis subscription lost (%s); retrying", exc)
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis-py 8
                await asyncio.sleep(0.3)
