"""The process's cache of user rows behind `GET /v1/users/me` (shared.cache), versioned by each row's
`updated_at`: a login keeps its user's fresh row cached here."""

from __future__ import annotations

from account_manager import store
from shared.cache import RowCache
from shared.clock import version_of
from shared.context import Context
from shared.registry import Key

USER_CACHE = Key[RowCache[store.UserRow]]("user_cache")


def user_cache(ctx: Context) -> RowCache[store.UserRow]:
    return ctx.services.get(USER_CACHE, lambda: RowCache[store.UserRow](ctx.revocations, "user", row_version))


def row_version(user: store.UserRow) -> int:
    return version_of(user.updated_at)
