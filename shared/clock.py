"""The two small things every package needs the same way: the time now, in UTC, and the SHA-256 hex
digest under which secrets, codes and refresh tokens are stored (high-entropy values: a fast hash is
right for them; passwords go through argon2id in account_manager.passwords)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
