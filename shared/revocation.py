"""Revocation, keyed by identity (session id, token id, device UID), never by token bytes (SPEC §3).

The database is the system of record. Each process keeps the revoked identities in memory, so the
check on the hot path is a set lookup; writes reach other processes at once through the fan-out, and a
reconciliation with the database every second catches anything the fan-out dropped. When that view
cannot be confirmed (database or Redis unreachable for longer than the allowed staleness) every check
fails closed with 503, never 200 and never 401 (SPEC §11).

It also carries what else stops holding: a role lost on a device ("access", SPEC §5: within 5 s, as a
revoked session) and the rows per-process caches must forget ("user", "device_row", "members"). They
ride the same channel, the same one-statement reconciliation pass and the same staleness bound on
purpose: a cache of roles is only as fresh as this view, and must stop answering when it is not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from shared import background, store
from shared.clock import utcnow
from shared.db import Database, Tx
from shared.errors import InvalidTokenError, ServiceUnavailableError
from shared.fanout import Fanout
from shared.metrics import Metrics
from shared.settings import Settings
from shared.tokens import Claims, TokenKind

log = logging.getLogger("handshake.revocation")

CHANNEL = "revocations"
# Re-read a little of the past on every pass: a revocation committed late is still seen.
_OVERLAP = timedelta(seconds=10)


class Revocations:
    def __init__(self, settings: Settings, db: Database, fanout: Fanout, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.db = db
        self.fanout = fanout
        # id -> when this process learnt of it (epoch seconds), for pruning.
        self.sids: dict[str, float] = {}
        self.jtis: dict[str, float] = {}
        self.devices: dict[str, float] = {}
        # How long a revoked id must be remembered: the longest-lived token that could carry it.
        self.horizon = timedelta(
            seconds=max(settings.access_ttl, settings.device_token_ttl, settings.exchanged_ttl) + settings.leeway + 60
        )
        self._since: datetime | None = None
        self._last_ok = float("-inf")
        self._redis_ok = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Queue[tuple[str, str]]] = []
        self._watchers: dict[str, list[Callable[[list[str], Sequence[int | None]], None]]] = {}
        # (kind, id) -> (version, when) of the last versioned change told to the watchers: a pass that
        # re-reads the same change (the overlap) does not tell it again.
        self._told: dict[tuple[str, str], tuple[int, float]] = {}
        self._background: set[asyncio.Task[None]] = set()
        fanout.subscribe(CHANNEL, self._on_message)
        fanout.on_reconnect.append(self.reconcile)

    # --- the hot path -------------------------------------------------------------------------

    @property
    def confirmed(self) -> bool:
        """The in-memory view may be trusted: fan-out connected, database (and Redis) heard from lately."""
        last = self._last_ok if self.fanout.redis is None else min(self._last_ok, self._redis_ok)
        return self.fanout.connected and time.monotonic() - last < self.settings.revocation_max_staleness

    def check(self, claims: Claims) -> None:
        if not self.confirmed:
            raise ServiceUnavailableError("Token revocation state cannot be confirmed right now.")
        if self.revoked(claims) is not None:
            raise InvalidTokenError()

    def revoked(self, claims: Claims) -> str | None:
        """Why a token is no longer good, from the in-memory view: "disabled" (its device is),
        "revoked" (the token itself, or its session); None if it is not revoked."""
        if claims.kind is TokenKind.DEVICE and claims.sub in self.devices:
            return "disabled"
        if claims.jti in self.jtis or (claims.kind is not TokenKind.DEVICE and claims.sid in self.sids):
            return "revoked"
        return None

    def require_confirmed(self) -> None:
        if not self.confirmed:
            raise ServiceUnavailableError("Token revocation state cannot be confirmed right now.")

    # --- writes ---------------------------------------------------------------------------------

    async def revoke_sessions(self, tx: Tx, sids: Iterable[str], *, reason: str) -> list[str]:
        sids = list(sids)
        if not sids:
            return []
        await store.mark_sessions_revoked(tx, sids, reason=reason, now=utcnow())
        tx.after_commit(lambda: self.announce("sid", sids))
        return sids

    async def revoke_jti(self, tx: Tx, jti: str, *, expires_at: datetime) -> None:
        await store.record_revoked_jti(tx, jti, now=utcnow(), expires_at=expires_at)
        tx.after_commit(lambda: self.announce("jti", [jti]))

    def set_device_disabled(self, tx: Tx, uid: str, disabled: bool) -> None:
        """Called by the device manager inside the transaction that flips the flag."""
        tx.after_commit(lambda: self.announce("device" if disabled else "device_enabled", [uid]))

    def user_changed(self, tx: Tx, user_id: str, *, version: int | None = None) -> None:
        """A user row changed (profile, role, disabled, password, last login): caches of it forget it,
        but where they hold it at `version` (shared.cache: the row as this write left it)."""
        self.changed_soon(tx, "user", [user_id], None if version is None else [version])

    def changed_soon(self, tx: Tx, kind: str, ids: list[str], versions: list[int | None] | None = None) -> None:
        """Rows that caches keep changed: they forget them in this process at commit and in the others
        through the fan-out, sent in the background (the writer does not wait on Redis for it:
        reconciliation bounds a lost or late message)."""

        def committed() -> None:
            self._apply(kind, ids, versions)
            task = asyncio.get_running_loop().create_task(self._publish(kind, ids, versions))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        tx.after_commit(committed)

    def watch(self, kind: str, callback: Callable[[list[str]], None]) -> None:
        """Call `callback` with the ids of every change of `kind` this process learns of: by its own
        writes, by the fan-out, and by each reconciliation pass (what the fan-out may have dropped)."""
        self.watch_versions(kind, lambda ids, _versions: callback(ids))

    def watch_versions(self, kind: str, callback: Callable[[list[str], Sequence[int | None]], None]) -> None:
        """As `watch`, with each id's version after the change where it is known (None where not):
        a cache that holds that version already holds the change."""
        self._watchers.setdefault(kind, []).append(callback)

    def access_changed(self, tx: Tx, uid: str) -> None:
        """Someone gained or lost a role on a device: live MQTT permissions are re-read (SPEC §5)."""
        tx.after_commit(lambda: self.announce("access", [uid]))

    async def announce(self, kind: str, ids: list[str]) -> None:
        self._apply(kind, ids)
        await self._publish(kind, ids)

    async def _publish(self, kind: str, ids: list[str], versions: list[int | None] | None = None) -> None:
        message: dict[str, object] = {"kind": kind, "ids": ids, "at": time.time()}
        if versions is not None:
            message["versions"] = versions
        try:
            # Bounded: a Redis that accepts connections and answers nothing must not hold the request.
            async with asyncio.timeout(self.settings.backend_timeout):
                await self.fanout.publish(CHANNEL, message)
        except Exception as exc:
            # Already in the database: the others will see it at their next reconciliation.
            log.warning("could not fan out a revocation (%r); reconciliation will carry it", exc)

    def listen(self) -> asyncio.Queue[tuple[str, str]]:
        """A queue of (kind, id) for every revocation this process learns of (the broker's kick)."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)
        self._listeners.append(queue)
        return queue

    def _on_message(self, message: dict[str, object]) -> None:
        kind, ids, at = message.get("kind"), message.get("ids"), message.get("at")
        if self.metrics is not None and isinstance(at, float):
            self.metrics.revocation_propagation.observe(max(0.0, time.time() - at))
        if not isinstance(kind, str) or not isinstance(ids, list):
            return
        versions = message.get("versions")
        if isinstance(versions, list) and len(versions) == len(ids):
            pairs = [
                (i, v if type(v) is int else None) for i, v in zip(ids, versions, strict=True) if isinstance(i, str)
            ]
            self._apply(kind, [i for i, _ in pairs], [v for _, v in pairs])
        else:
            self._apply(kind, [i for i in ids if isinstance(i, str)])

    def _apply(self, kind: str, ids: list[str], versions: Sequence[int | None] | None = None) -> None:
        if versions is not None:
            # A change told already, with its version (by the commit, then its echo through the
            # fan-out, then every pass that re-reads it), is not told again.
            untold = [
                (id_, version)
                for id_, version in zip(ids, versions, strict=True)
                if version is None or self._told.get((kind, id_), (None,))[0] != version
            ]
            if not untold:
                return
            ids, versions = [id_ for id_, _ in untold], [version for _, version in untold]
        known = versions if versions is not None else [None] * len(ids)
        for callback in self._watchers.get(kind, ()):
            callback(ids, known)
        if versions is not None:
            told = time.monotonic()
            for id_, version in zip(ids, versions, strict=True):
                if version is not None:
                    self._told[(kind, id_)] = (version, told)
        target = {"sid": self.sids, "jti": self.jtis, "device": self.devices}.get(kind)
        if target is not None:
            fresh = [i for i in ids if i not in target]
            now = time.time()
            for item in fresh:
                target[item] = now
        elif kind == "device_enabled":
            for uid in ids:
                self.devices.pop(uid, None)
            return
        elif kind == "access":
            fresh = ids  # who may see a device changed: listeners re-read it every time
        else:
            return
        for queue in self._listeners:
            for item in fresh:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait((kind, item))

    # --- reconciliation -----------------------------------------------------------------------

    async def start(self) -> None:
        await self._pass()  # a failure here only means 503s until a later pass succeeds
        await self.start_loop()

    async def start_loop(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="handshake-revocation")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            ok = await self._pass()
            background.honour_cancel()
            # After a failure, try again soon: one slow pass must not leave the view stale for long.
            await asyncio.sleep(self.settings.reconcile_interval if ok else min(0.25, self.settings.reconcile_interval))

    async def _pass(self) -> bool:
        ok = True
        try:
            await self.reconcile()
        except Exception as exc:
            ok = False
            log.warning("revocation reconciliation failed: %r", exc)
        if self.fanout.redis is not None:
            try:
                await self.fanout.redis.ping()
                self._redis_ok = time.monotonic()
            except Exception as exc:
                ok = False
                log.warning("Redis ping failed: %r", exc)
        return ok

    async def reconcile(self) -> None:
        started = utcnow()
        # The view is as of the pass's one snapshot, taken at its start: its staleness counts from then.
        snapshot = time.monotonic()
        since = started - self.horizon if self._since is None else self._since - _OVERLAP
        # One statement outside a transaction: one round trip (one thread hop on SQLite), one snapshot.
        # Under a reconnect storm every hop waits for a busy event loop: a pass of several hops would
        # time out, and every CONNECT would be refused as if the database were gone. A busy event loop
        # is not a dead database.
        # Caches start empty: the first pass has no user changes to tell them of.
        caches_since = started if self._since is None else since
        found: dict[str, list[str]] = {"sid": [], "jti": [], "device": [], "user": [], "device_row": [], "members": []}
        versions: dict[str, list[int | None]] = {kind: [] for kind in found}
        async with asyncio.timeout(self.settings.backend_timeout * 2):
            async with self.db.query() as tx:
                for kind, id_, version in await store.revocation_changes(tx, since=since, caches_since=caches_since):
                    found[kind].append(id_)
                    versions[kind].append(version)
        sids, jtis, devices = found["sid"], found["jti"], set(found["device"])
        for kind in ("user", "device_row", "members"):
            if found[kind]:
                self._apply(kind, found[kind], versions[kind])
        self._apply("sid", sids)
        self._apply("jti", jtis)
        self._apply("device", sorted(devices - self.devices.keys()))
        for uid in self.devices.keys() - devices:
            del self.devices[uid]
        self._prune()
        self._since = started
        self._last_ok = snapshot

    def _prune(self) -> None:
        # An id learnt before the horizon can only be in tokens that have expired anyway.
        cutoff = time.time() - self.horizon.total_seconds()
        for ids in (self.sids, self.jtis):
            for stale in [i for i, learnt in ids.items() if learnt < cutoff]:
                del ids[stale]
        # A change is re-read for the overlap after it: past twice that, no pass reads it again.
        told_cutoff = time.monotonic() - 2 * _OVERLAP.total_seconds()
        for stale_key in [key for key, (_, told) in self._told.items() if told < told_cutoff]:
            del self._told[stale_key]
