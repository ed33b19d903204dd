"""Per-process caches of rows that rarely change (a user's profile), kept right the way revocations are
(shared.revocation): a change committed in any process reaches every other one at once through the
fan-out, and each reconciliation pass (every second) tells the cache of every row changed since the
last one, whatever the fan-out dropped. A cache answers only while that view is confirmed: once
reconciliation has not succeeded for `REVOCATION_MAX_STALENESS` seconds, every read goes to the
database. So a cached row is at most about one reconciliation interval behind a lost fan-out message,
and never more than the staleness bound (5 s in all, as for revocations).

A read that raced a change cannot put back what it read before the change: each put carries the
cache's generation from before its read, and any change in between makes the put a no-op."""

from __future__ import annotations

from typing import Generic, TypeVar

from shared.revocation import Revocations

V = TypeVar("V")

MAX_ENTRIES = 100_000


class RowCache(Generic[V]):
    def __init__(self, revocations: Revocations, kind: str, *, max_entries: int = MAX_ENTRIES) -> None:
        self.revocations = revocations
        self.max_entries = max_entries
        self._rows: dict[str, V] = {}
        self._counter = 0  # one tick per forget
        self._forgotten: dict[str, int] = {}  # key -> the tick it was last forgotten at
        self._floor = 0  # tickets older than this are refused (the record of forgets was cleared)
        revocations.watch(kind, self.forget)

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
        if len(self._rows) >= self.max_entries:
            self._rows.pop(next(iter(self._rows)))  # the oldest entry makes room
        self._rows[key] = value

    def forget(self, keys: list[str]) -> None:
        self._counter += 1
        for key in keys:
            self._rows.pop(key, None)
            self._forgotten[key] = self._counter
        if len(self._forgotten) > self.max_entries:
            self._forgotten.clear()
            self._floor = self._counter + 1  # every read in flight now is refused: none can be stale

    def __len__(self) -> int:
        return len(self._rows)
