"""What the command line records from a process of its own reaches a running server's live event stream
(the dashboard's): through Redis where there is one, else read back from the database. Both backends."""

from __future__ import annotations

import asyncio
import getpass
import secrets

from shared.cli import record_key_event
from shared.context import Context
from shared.events import Event
from shared.models import EventType
from shared.settings import Settings


async def test_a_key_event_from_the_command_line_reaches_the_live_stream(ctx: Context, settings: Settings) -> None:
    kid = "k" + secrets.token_hex(8)
    async with ctx.events.listen() as live:
        # As `handshake keys revoke` does it: another process (here a thread with its own event loop).
        await asyncio.to_thread(record_key_event, settings, EventType.KEY_REVOKED, {"kid": kid})

        async def heard() -> Event:
            while True:
                event = await live.get()
                if event.type == "key_revoked" and event.detail.get("kid") == kid:
                    return event

        event = await asyncio.wait_for(heard(), 5)
        await asyncio.sleep(1.5)  # and only once, though the database is read back every second
        again = [e for e in (live.get_nowait() for _ in range(live.qsize())) if e.detail.get("kid") == kid]
    assert event.actor_type == "system" and event.actor_id is None
    assert str(event.detail["operator"]).startswith(getpass.getuser() + "@")
    assert again == []
