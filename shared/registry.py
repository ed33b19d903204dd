"""What each service keeps for the life of a context (its password hasher, caches, the connector), by
typed key: `ctx.services.get(PASSWORDS, lambda: Passwords(ctx))` is a `Passwords`, checked by mypy,
with no string-keyed dictionary whose readers re-assert the type. One instance per key per context;
`shared` declares nothing of the services (its import contract forbids it): each service declares the
keys of what it keeps, beside the class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class Key(Generic[T]):
    """A name for one kind of service state, typed by what it holds."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


class Services:
    def __init__(self) -> None:
        self._held: dict[Key[Any], Any] = {}

    def get(self, key: Key[T], make: Callable[[], T]) -> T:
        """The instance under `key`, made by `make` on first use."""
        if key not in self._held:
            self._held[key] = make()
        return cast(T, self._held[key])

    def find(self, key: Key[T]) -> T | None:
        """The instance under `key`, if a service put one there."""
        return cast("T | None", self._held.get(key))

    def put(self, key: Key[T], value: T) -> None:
        self._held[key] = value

    def pop(self, key: Key[T]) -> T | None:
        return cast("T | None", self._held.pop(key, None))
