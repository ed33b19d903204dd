"""Per-process caches of rows that rarely change (a user's profile), kept right the way revocations are
(shared.revocation): a change committed in any process reaches every other one at once through the
fan-out, and each reconciliation pass (every second) tells the cache of every row changed since the
last one, whatever the fan-out dropped. A cache answers only while that view is confirmed: once
reconciliation has not succeeded for `REVOCATION_MAX_STALENESS` seconds, every read goes to the
database. So a cached row is at most about one reconciliation interval behind a lost fan-out message,
and never more than the staleness bound (5 s in all, as for revocations).

A read that raced a change cannot put back what it read before the change: each put carries the
cache's generation from before its read, and any change in between makes the put a no-op.

Rows carry a version (their `updated_at`, to the microsecond). A change notice that names the version
the cached row already has is of the write that row shows: the row stays. So a login, which changes its
user's row, keeps that row cached in its own process (`replace`, with what the write returned), and
neither the echo of its own fan-out message nor the reconciliation passes that report it for the next
seconds forget it again (issue 11: in a login storm every pass forgot every user who logged in within
the last ten seconds, and `GET /v1/users/me` went to the database in the middle of the storm's writes).
A notice with another version, or none, forgets the row, whichever is newer: versions are compared for
equality only, so no clock has to be right."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from shared.db import Tx
from shared.revocation import Revocations

V = TypeVar("V")

MAX_ENTRIES = 100_000


class RowCache(Generic[V]):
    def __init__(
        self, revocations: Revocations, kind: str, version: Callable[[V], int], *, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.revocations = revocations
        self.version = version
        self.max_entries = max_entries
        self._rows: dict[str, V] = {}
        self._counter = 0  # one tick per change notice (or replace)
        self._forgotten: dict[str, int] = {}  # key -> the tick of its last change notice (or replace)
        self._floor = 0  # tickets older than this are refused (the record of forgets was cleared)
        revocations.watch_versions(kind, self.forget)

    def get(self, key: str) -> V | None:
        if not self.revocations.confirmed:
            return None
        return self._rows.get(key)

    def ticket(self) -> int:
        """Take before reading a row from the database; hand to `put` with what was read."""
        return self._counter

    def put(self, key: str, value: V, ticket: int) -> None:
        if ticket < self._floor or self._forgotten.get(key, -1) > ticket:
            return  # the row changed while it was read: what was read may be from before the change
        self._keep(key, value)

    def keep_on_commit(self, tx: Tx, key: str, value: V) -> None:
        """`value` is the row as `tx`, which changed it, leaves it: kept once `tx` commits. Register it
        before the change's notice, whose version then names the row kept.

        The write holds the row until its COMMIT, so any change of the row heard before the COMMIT
        is sent came before this one, and `value` shows it. A notice heard between the COMMIT and the
        keeping may be of a change made after this one: the row is forgotten instead."""
        ticket = 0

        def committing() -> None:
            nonlocal ticket
            ticket = self._counter

        tx.before_commit(committing)
        tx.after_commit(lambda: self.replace(key, value, ticket))

    def replace(self, key: str, value: V, ticket: int) -> None:
        """`value` is the row as a change this process committed left it (`ticket` taken right before
        its COMMIT): kept, and every read in flight of the row is refused (it may be from before).
        If a notice of another change came since the ticket, that change may be newer than this one:
        the row is forgotten instead."""
        raced = ticket < self._floor or self._forgotten.get(key, -1) > ticket
        self._mark([key])
        if raced:
            self._rows.pop(key, None)
        else:
            self._keep(key, value)

    def forget(self, keys: list[str], versions: Sequence[int | None]) -> None:
        """Rows changed: forgotten, but where the notice names the version the cached row has."""
        self._mark(keys)
        for key, version in zip(keys, versions, strict=True):
            cached = self._rows.get(key)
            if cached is not None and (version is None or self.version(cached) != version):
                del self._rows[key]

    def _keep(self, key: str, value: V) -> None:
        if key not in self._rows and len(self._rows) >= self.max_entries:
            self._rows.pop(next(iter(self._rows)))  # the oldest entry makes room
        self._rows[key] = value

    def _mark(self, keys: list[str]) -> None:
        """Reads of these rows in flight now are refused when they come back."""
        self._counter += 1
        for key in keys:
            self._forgotten[key] = self._counter
        if len(self._forgotten) > self.max_entries:
            self._forgotten.clear()
            self._floor = self._counter + 1  # every read in flight now is refused: none can be stale

    def __len__(self) -> int:
        return len(self._rows)
