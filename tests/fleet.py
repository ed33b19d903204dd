"""A fleet written straight into the database, for tests at fleet size: tens of thousands of devices
through the API one by one would take minutes; a few executemany statements take about two seconds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from shared import tables
from shared.context import Context

MODELS = ("plug-2", "cam-1", "Lamp-3")

# Rows per statement: each stays far inside the driver's command timeout on a loaded CI machine (one
# statement of 50,000 rows once took more than its 10 s there).
CHUNK = 5_000


def fleet_uid(n: int) -> str:
    """The UID of the n-th device: two letters that vary (so UID prefixes narrow), then the number."""
    return "ABCDEFGH"[n % 8] + "K" + f"{n:018d}"


async def seed_fleet(ctx: Context, *, count: int, owners: Sequence[str] = ()) -> list[str]:
    """`count` devices, the last one newest; every third unbound, the others spread over `owners`;
    every seventh online since a minute ago. Their UIDs, oldest first."""
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for n in range(count):
        online = n % 7 == 0
        rows.append(
            {
                "uid": fleet_uid(n),
                "model": MODELS[n % len(MODELS)],
                "name": None,
                "secret_hash": "0" * 64,  # never matches: these devices cannot log in
                "claim_code_hash": "-",
                "owner_id": owners[n % len(owners)] if owners and n % 3 else None,
                "disabled": False,
                "created_at": now - timedelta(seconds=count - n),
                "online": online,
                "connected_at": now - timedelta(minutes=1) if online else None,
                "last_seen": now - timedelta(minutes=1 if online else 60 + n % 600),
                "ip": "203.0.113.9" if online else None,
                "region": "DE" if online else None,
            }
        )
    await _insert(ctx, tables.devices, rows)
    async with ctx.db.engine.connect() as conn:
        # Fresh statistics, so the planners choose as they would for a real fleet.
        await conn.exec_driver_sql("ANALYZE")
        await conn.commit()
    return [row["uid"] for row in rows]


async def seed_users(ctx: Context, *, count: int) -> list[str]:
    """`count` users who cannot log in, so that the planners see a user table of a real size. Their ids."""
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "id": f"seeded{n:014d}",
            "username": f"seeded-{n}",
            "username_key": f"seeded-{n}",
            "email": f"seeded-{n}@example.net",
            "password_hash": "-",  # never verifies
            "role": "user",
            "disabled": False,
            "created_at": now - timedelta(days=1, seconds=n),
            "updated_at": now - timedelta(days=1),
        }
        for n in range(count)
    ]
    await _insert(ctx, tables.users, rows)
    return [row["id"] for row in rows]


async def seed_history(ctx: Context, *, uid: str, count: int, every: timedelta = timedelta(minutes=40)) -> None:
    """`count` events of one device, the last one now: it connected, a command went, it went away."""
    now = datetime.now(UTC)
    kinds = ("device_connected", "command_sent", "device_disconnected")
    rows: list[dict[str, Any]] = [
        {
            "ts": now - every * (count - 1 - k),
            "type": kinds[k % 3],
            "actor_type": "device",
            "actor_id": uid,
            "device_uid": uid,
            "ip": "203.0.113.9",
            "detail": {"reason": "client_closed"} if kinds[k % 3] == "device_disconnected" else {},
        }
        for k in range(count)
    ]
    async with ctx.db.write() as tx:
        await tx.execute(sa.insert(tables.events), rows)


async def _insert(ctx: Context, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """`rows` into `table`, CHUNK rows a statement and a transaction."""
    for start in range(0, len(rows), CHUNK):
        async with ctx.db.write() as tx:
            await tx.execute(sa.insert(table), list(rows[start : start + CHUNK]))
