"""Reading the activity log back (SPEC §7) for admins: filters, newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from account_manager import store
from shared.context import Context
from shared.events import event_from_row


async def list_events(
    ctx: Context,
    *,
    type: str | None,
    user_id: str | None,
    device_uid: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # RFC 3339 without an offset: read it as UTC
    async with ctx.db.read() as tx:
        rows, total = await store.list_events(
            tx,
            type=type,
            user_id=user_id,
            device_uid=device_uid.upper() if device_uid else None,
            since=since,
            limit=limit,
            offset=offset,
        )
    return [event_from_row(row).to_json() for row in rows], total
