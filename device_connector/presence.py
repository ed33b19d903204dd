"""Presence (SPEC §6): online, connected_at, last_seen, IP and region of each device, with
device_connected / device_disconnected events. The region comes from an offline GeoIP database:
the one geoip2fast ships, or a MaxMind .mmdb named by HANDSHAKE_GEOIP_DB."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from device_connector import store
from device_connector.journal import Journal, NewEvent, PresenceChange, write_batched
from shared.context import Context
from shared.db import Tx
from shared.events import event_row
from shared.models import ActorType, EventType

log = logging.getLogger("handshake.presence")


class Regions:
    def __init__(self, mmdb: Path | None) -> None:
        self.mmdb = mmdb

    @cached_property
    def _reader(self) -> Any:
        if self.mmdb is not None:
            import geoip2.database

            return geoip2.database.Reader(str(self.mmdb))
        from geoip2fast import GeoIP2Fast

        return GeoIP2Fast(verbose=False)

    async def load(self) -> None:
        """Open the database in a thread, before the first connect: it takes ~0.1 s (geoip2fast
        unpacks its table), which on the first CONNECT stalled the event loop."""
        await asyncio.to_thread(lambda: self._reader)

    def region(self, ip: str | None) -> str | None:
        if not ip:
            return None
        try:
            if self.mmdb is not None:
                return str(self._reader.country(ip).country.iso_code or "") or None
            found = self._reader.lookup(ip)
            code = getattr(found, "country_code", "")
            return code if code and code != "--" else None
        except Exception:
            return None  # private, unknown or malformed address: no region


class Presence:
    """Presence writes go through the journal, stamped when they happened, in order."""

    def __init__(self, ctx: Context, journal: Journal) -> None:
        self.ctx = ctx
        self.journal = journal
        self.regions = Regions(ctx.settings.geoip_db)

    def census(self, live: dict[str, str | None]) -> None:
        """The broker's word on which devices are connected now (uid -> IP), at start or after its
        events were lost: every other device goes offline (after a crash none may stay marked online,
        SPEC §11), and a connected one the database has offline, whose connect went unheard, comes
        online with its device_connected event."""
        at = datetime.now(UTC)

        async def write(tx: Tx) -> None:
            gone = await store.mark_offline_except(tx, live=set(live), now=at)
            if gone:
                self.ctx.revocations.changed_soon(tx, "device_row", gone)
            came = await store.offline_among(tx, uids=sorted(live))
            await write_batched(self.ctx, tx, [entry for uid in came for entry in self._connected(uid, live[uid], at)])

        self.journal.add(write)

    def connected(self, uid: str, ip: str | None) -> None:
        self.journal.add(*self._connected(uid, ip, datetime.now(UTC)))

    def disconnected(self, uid: str, ip: str | None, reason: str) -> None:
        at = datetime.now(UTC)  # stamped when it happened, written when the journal gets to it
        event = self._event(EventType.DEVICE_DISCONNECTED, uid, ip, {"reason": reason}, at)
        self.journal.add(PresenceChange(uid, False, at, ip), event)

    def _connected(self, uid: str, ip: str | None, at: datetime) -> tuple[PresenceChange, NewEvent]:
        region = self.regions.region(ip)
        event = self._event(EventType.DEVICE_CONNECTED, uid, ip, {"region": region} if region else {}, at)
        return PresenceChange(uid, True, at, ip, region), event

    @staticmethod
    def _event(type_: EventType, uid: str, ip: str | None, detail: dict[str, str], at: datetime) -> NewEvent:
        return NewEvent(
            event_row(type_, actor_type=ActorType.DEVICE, actor_id=uid, device_uid=uid, ip=ip, detail=detail, ts=at)
        )
