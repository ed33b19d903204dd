"""The small things every package needs the same way: the time now, in UTC; a row's version, from its
`updated_at`; and the SHA-256 hex digest under which secrets, codes and refresh tokens are stored
(high-entropy values: a fast hash is right for them; passwords go through argon2id in
account_manager.passwords)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def version_of(updated_at: datetime) -> int:
    """A row's version as change notices carry it (shared.cache): its `updated_at` in whole
    microseconds, exact where a float of seconds would round."""
    return (updated_at - _EPOCH) // timedelta(microseconds=1)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
