"""Presence (SPEC §6): online, connected_at, last_seen, IP and region of each device, with
device_connected / device_disconnected events. The region comes from an offline GeoIP database:
the one geoip2fast ships, or a MaxMind .mmdb named by HANDSHAKE_GEOIP_DB."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from device_connector import store
from device_connector.journal import Journal, NewEvent, PresenceChange
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
            await store.mark_offline_except(tx, live=set(live), now=at)
            came = await store.offline_among(tx, uids=sorted(live))
            if not came:
                return
            rows, events = [], []
            for uid in came:
                ip, region = live[uid], self.regions.region(live[uid])
                rows.append(
                    {"device": uid, "is_online": True, "since": at, "now": at, "address": ip, "country": region}
                )
                detail = {"region": region} if region else {}
                events.append(
                    event_row(
                        EventType.DEVICE_CONNECTED,
                        actor_type=ActorType.DEVICE,
                        actor_id=uid,
                        device_uid=uid,
                        ip=ip,
                        detail=detail,
                        ts=at,
                    )
                )
            await store.set_presence_many(tx, connected=rows, disconnected=[])
            await self.ctx.events.record_rows(tx, events)

        self.journal.add(write)

    def connected(self, uid: str, ip: str | None) -> None:
        region = self.regions.region(ip)
        self._record(uid, ip, online=True, region=region, detail={"region": region} if region else {})

    def disconnected(self, uid: str, ip: str | None, reason: str) -> None:
        self._record(uid, ip, online=False, region=None, detail={"reason": reason})

    def _record(self, uid: str, ip: str | None, *, online: bool, region: str | None, detail: dict[str, str]) -> None:
        at = datetime.now(UTC)  # stamped when it happened, written when the journal gets to it
        event = event_row(
            EventType.DEVICE_CONNECTED if online else EventType.DEVICE_DISCONNECTED,
            actor_type=ActorType.DEVICE,
            actor_id=uid,
            device_uid=uid,
            ip=ip,
            detail=detail,
            ts=at,
        )
        self.journal.add(PresenceChange(uid, online, at, ip, region), NewEvent(event))
