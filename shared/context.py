"""One Context per process: settings, keys, verifier, storage, cache, fan-out, events. Built once by
the composition root (shared.app) or the command line and handed to everything that needs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from shared import background
from shared.auth import Authenticator
from shared.counters import Counters, MemoryCounters, RedisCounters
from shared.db import Database
from shared.device_lists import DeviceLists
from shared.errors import ConfigurationError
from shared.events import EventLog
from shared.fanout import Fanout
from shared.keys import KeyDirectory, KeyRing, ring_from_settings
from shared.metrics import Metrics
from shared.pool import BoundedPool
from shared.registry import Services
from shared.revocation import Revocations
from shared.settings import Settings
from shared.tokens import Issuer, Verifier

log = logging.getLogger("handshake")


@dataclass
class Context:
    settings: Settings
    keys: KeyRing
    key_dir: KeyDirectory
    verifier: Verifier
    issuer: Issuer
    db: Database
    redis: aioredis.Redis | None
    counters: Counters
    fanout: Fanout
    revocations: Revocations
    events: EventLog
    auth: Authenticator
    hashing: BoundedPool
    metrics: Metrics
    device_lists: DeviceLists
    # What each service keeps for the life of the context (its password hasher, caches, the
    # connector), by typed key (shared.registry).
    services: Services = field(default_factory=Services)
    # Checks /readyz runs besides the database, Redis and revocation (the device connector's broker).
    readiness: dict[str, Callable[[], bool]] = field(default_factory=dict)
    # Where the embedded MQTT broker listens (`port`, `tls_port`), for /readyz and the discovery
    # document; None without one (a clustered broker, or no device connector in this process).
    mqtt_listener: dict[str, int] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, create_keys: bool = True) -> Context:
        keys, key_dir = ring_from_settings(settings, create=create_keys)
        db = Database(settings)
        redis = None
        if settings.redis_url:
            timeout = settings.backend_timeout
            # A pooled connection that died with a Redis restart is retried once on a fresh one.
            redis = aioredis.Redis.from_url(
                settings.redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=5,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
        metrics = Metrics()
        fanout = Fanout(redis, prefix=settings.redis_prefix)
        revocations = Revocations(settings, db, fanout, metrics=metrics)
        verifier = Verifier(
            keys,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.leeway,
            cache_size=settings.token_cache_size,
        )
        counters: Counters = (
            RedisCounters(redis, prefix=settings.redis_prefix) if redis is not None else MemoryCounters()
        )
        return cls(
            settings=settings,
            keys=keys,
            key_dir=key_dir,
            verifier=verifier,
            issuer=Issuer(keys, issuer=settings.issuer, audience=settings.audience),
            db=db,
            redis=redis,
            counters=counters,
            fanout=fanout,
            revocations=revocations,
            events=EventLog(fanout),
            auth=Authenticator(verifier, revocations=revocations, metrics=metrics),
            hashing=BoundedPool(workers=settings.hash_workers, queue=settings.hash_queue),
            metrics=metrics,
            device_lists=DeviceLists(revocations, db),
        )

    async def check_backends(self) -> None:
        """Start-up: say plainly which backend is missing instead of failing later."""
        problem = await self.db.problem()
        if problem is not None:
            where = _redact(self.settings.database_url)
            if self.settings.is_sqlite:  # a file: nothing to start
                raise ConfigurationError(f"cannot use the database at {where}: {problem}")
            if problem.startswith("it "):  # nothing answered: start it, or point at the right place
                raise ConfigurationError(
                    f"cannot reach the database at {where} ({problem}): start it or fix HANDSHAKE_DATABASE_URL"
                )
            raise ConfigurationError(
                f"the database at {where} refused the connection: {problem}; fix HANDSHAKE_DATABASE_URL"
            )
        if self.redis is not None:
            try:
                async with asyncio.timeout(self.settings.backend_timeout * 2):
                    await self.redis.ping()
            except Exception as exc:
                raise ConfigurationError(
                    f"cannot reach Redis at {_redact(self.settings.redis_url or '')}: "
                    "start it or fix HANDSHAKE_REDIS_URL"
                ) from exc

    async def start(self) -> None:
        await self.revocations.start()
        await self.fanout.start()
        self._tasks.append(asyncio.create_task(self._watch_keys(), name="handshake-keys"))
        if self.redis is None:
            follow = self.events.follow_database(self.db)
            self._tasks.append(asyncio.create_task(follow, name="handshake-events-from-db"))

    async def stop(self) -> None:
        await background.stop(*self._tasks)
        self._tasks.clear()
        await self.revocations.stop()
        await self.fanout.stop()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()
        self.hashing.close()

    async def _watch_keys(self) -> None:
        """Pick up `keys rotate` and `keys revoke` from any process within a second or two."""
        if self.settings.jwt_alg == "HS256":
            return
        seen = self.key_dir.fingerprint()
        while True:
            await asyncio.sleep(self.settings.key_reload_interval)
            current = self.key_dir.fingerprint()
            if current == seen:
                continue
            try:
                self.keys.replace(self.key_dir.load())
                seen = current
                log.info("key ring reloaded: %s", ", ".join(self.keys.by_kid))
            except Exception as exc:
                log.warning("key ring reload failed: %s", exc)


def _redact(url: str) -> str:
    """A URL fit for a log line: no password (SQLAlchemy's URL parser reads Redis URLs too)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a URL that cannot be parsed)"
