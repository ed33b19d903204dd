"""Passwords: argon2id in the bounded hashing pool, never on the event loop, and a strength rule
(at least 8 characters, not a common password)."""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.context import Context
from shared.errors import WeakPasswordError
from shared.registry import Key

MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; a bound keeps a stranger from making us hash megabytes


@cache
def _common_passwords() -> frozenset[str]:
    # zxcvbn ships the 30,000 most common passwords of real leaks.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def check_strength(password: str) -> None:
    if len(password) < MIN_LENGTH or len(password) > MAX_LENGTH:
        raise WeakPasswordError(f"The password must have {MIN_LENGTH} to {MAX_LENGTH} characters.")
    if password.lower() in _common_passwords():
        raise WeakPasswordError("That password is one of the most common passwords; choose another.")


class Passwords:
    def __init__(self, ctx: Context) -> None:
        settings = ctx.settings
        self.pool = ctx.hashing
        self.hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        # Unknown users are checked against this, so they take as long as known ones. Made in the pool
        # on first use: a hash on the event loop would stall every other request for ~40 ms.
        self.dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await self.pool.run(self.hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        if stored_hash is None and self.dummy_hash is None:
            self.dummy_hash = await self.pool.run(self.hasher.hash, secrets.token_urlsafe(16))
        checked = stored_hash or self.dummy_hash
        assert checked is not None
        return await self.pool.run(self._verify, checked, password) and stored_hash is not None

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored_hash, password[:MAX_LENGTH])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


PASSWORDS = Key[Passwords]("passwords")


def passwords(ctx: Context) -> Passwords:
    return ctx.services.get(PASSWORDS, lambda: Passwords(ctx))
