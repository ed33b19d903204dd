"""The device connector's runtime: the embedded broker and what keeps it in step with the platform —
presence, the command relay, persisted state, and closing connections whose token expired or whose
session, token or device was revoked, and re-reading grants when roles on a device change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from amqtt.session import Session

from device_connector import store
from device_connector.broker.gate import Gate
from device_connector.broker.server import HandshakeBroker
from device_connector.external import ExternalBroker
from device_connector.journal import Journal
from device_connector.presence import Presence
from device_connector.relay import DeviceOfflineError, DeviceTimeoutError, Relay
from shared.context import Context
from shared.db import Tx
from shared.models import ActorType, DeviceRole, EventType
from shared.tokens import TokenKind

log = logging.getLogger("handshake.connector")
SWEEP_INTERVAL = 0.5


def topic_parts(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "devices" else None


class Connector:
    def __init__(self, ctx: Context) -> None:
        settings = ctx.settings
        self.ctx = ctx
        ssl = None
        if settings.tls_cert and settings.tls_key:
            ssl = {"certfile": str(settings.tls_cert), "keyfile": str(settings.tls_key)}
        self.broker: HandshakeBroker | ExternalBroker
        if settings.mqtt_broker_url:
            self.broker = ExternalBroker(settings.mqtt_broker_url)
        else:
            self.broker = HandshakeBroker(
                host=settings.mqtt_host,
                port=settings.mqtt_port,
                gate=Gate(ctx),
                max_packet=settings.mqtt_max_packet,
                max_conn_per_ip=settings.mqtt_max_conn_per_ip,
                max_inflight=settings.mqtt_max_inflight,
                max_queued=settings.mqtt_max_queued,
                ssl=ssl,
            )
        self.journal = Journal(ctx)
        self.presence = Presence(ctx, self.journal)
        self.relay = Relay()
        self.broker.on_connected.append(self._connected)
        self.broker.on_disconnected.append(self._disconnected)
        self.broker.on_published.append(self._published)
        self.broker.on_denied.append(self._denied)
        self.broker.on_refused.append(self._refused)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.presence.mark_all_offline()
        await self.journal.start()
        await self.broker.start()  # (amqtt's start clears retained messages: load them after)
        await self._load_retained_state()
        self._tasks.append(asyncio.create_task(self._sweep(), name="handshake-mqtt-sweep"))
        self._tasks.append(asyncio.create_task(self._follow_access(), name="handshake-mqtt-access"))

    def ready(self) -> bool:
        """For /readyz: the embedded broker is serving, or the external one is connected."""
        if isinstance(self.broker, ExternalBroker):
            return self.broker.client.is_connected()
        return str(self.broker.transitions.state) == "started"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.broker.shutdown()
        await self.journal.stop()

    # --- hooks from the broker ---------------------------------------------------------------------

    def _connected(self, session: Session) -> None:
        self.ctx.metrics.mqtt_connections.inc()
        if session.claims.kind is TokenKind.DEVICE:
            self.presence.connected(session.client_id, session.remote_address)

    def _disconnected(self, session: Session, reason: str) -> None:
        self.ctx.metrics.mqtt_connections.dec()
        claims = getattr(session, "claims", None)
        if claims is not None and claims.kind is TokenKind.DEVICE:
            self.relay.on_device_gone(session.client_id)
            if not self.broker.is_connected(session.client_id):  # a takeover keeps it online
                self.presence.disconnected(session.client_id, session.remote_address, reason)

    def _published(self, session: Session, topic: str, data: bytes, retain: bool) -> None:
        parts = topic_parts(topic)
        if parts is None:
            return
        uid, channel = parts
        if channel == "replies":
            self.relay.on_reply(uid, data)
        elif channel == "state":
            self._save_reported(uid, data)

    def _denied(self, session: Session, topic: str) -> None:
        claims = getattr(session, "claims", None)
        actor = ActorType.DEVICE if claims is not None and claims.kind is TokenKind.DEVICE else ActorType.USER
        parts = topic_parts(topic)
        self._record(
            EventType.ACL_DENIED,
            actor_type=actor,
            actor_id=session.client_id,
            device_uid=parts[0][:20] if parts else None,
            ip=session.remote_address,
            detail={"topic": topic[:256], "action": "publish"},
        )

    def _refused(self, session: Session, reason: str) -> None:
        self._record(
            EventType.MQTT_AUTH_FAILED,
            actor_type=ActorType.SYSTEM,
            actor_id=(session.username or "")[:64] or None,
            ip=session.remote_address,
            detail={"client_id": (session.client_id or "")[:64], "reason": reason},
        )

    def _record(self, type: EventType, **kwargs: Any) -> None:
        async def write(tx: Tx) -> None:
            await self.ctx.events.record(tx, type, **kwargs)

        self.journal.add(write)

    # --- keeping connections honest ---------------------------------------------------------------

    async def _sweep(self) -> None:
        """Close what may no longer be connected: expired tokens, revoked sessions, disabled devices.
        Reading the in-memory revocation view makes this cheap enough to run twice a second."""
        revocations = self.ctx.revocations
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.time()
            for session in self.broker.live_sessions():
                claims = getattr(session, "claims", None)
                if claims is None:
                    continue
                reason = None
                if now > claims.exp:
                    reason = "token_expired"
                elif claims.kind is TokenKind.DEVICE and claims.sub in revocations.devices:
                    reason = "disabled"
                elif claims.sid in revocations.sids or claims.jti in revocations.jtis:
                    reason = "revoked"
                if reason is not None:
                    await self.broker.close_client(session.client_id, reason)

    async def _follow_access(self) -> None:
        """Roles on a device changed: re-read who holds which role and fix live grants at once."""
        queue = self.ctx.revocations.listen()
        while True:
            kind, uid = await queue.get()
            if kind != "access":
                continue
            try:
                async with self.ctx.db.read() as tx:
                    roles = await store.roles_on_device(tx, uid=uid)
            except Exception as exc:
                log.warning("could not re-read roles on %s: %s", uid, exc)
                continue
            self.apply_roles(uid, roles)

    def apply_roles(self, uid: str, roles: dict[str, DeviceRole]) -> None:
        for session, _ in list(self.broker.sessions.values()):
            grants = getattr(session, "grants", None)
            if grants is None or grants.user_id is None:
                continue
            role = roles.get(grants.user_id)
            if role is None:
                grants.roles.pop(uid, None)
            else:
                grants.roles[uid] = role
            self.broker.revoke_subscriptions(session)

    # --- commands and state ------------------------------------------------------------------------

    async def send_command(
        self, *, uid: str, action: str, params: dict[str, Any], timeout: float, actor_id: str, ip: str | None
    ) -> dict[str, Any]:
        if not self.broker.is_connected(uid):
            self.ctx.metrics.commands.labels(result="offline").inc()
            raise DeviceOfflineError()
        command_id, reply = self.relay.expect(uid)
        try:
            body = orjson.dumps({"id": command_id, "action": action, "params": params})
            await self.broker.publish_internal(f"devices/{uid}/commands", body)
            self._record(
                EventType.COMMAND_SENT,
                actor_type=ActorType.USER,
                actor_id=actor_id,
                device_uid=uid,
                ip=ip,
                detail={"id": command_id, "action": action},
            )
            try:
                result = await asyncio.wait_for(reply, timeout)
            except TimeoutError:
                self.ctx.metrics.commands.labels(result="timeout").inc()
                self._record(
                    EventType.COMMAND_TIMEOUT,
                    actor_type=ActorType.SYSTEM,
                    actor_id=None,
                    device_uid=uid,
                    detail={"id": command_id, "action": action},
                )
                raise DeviceTimeoutError() from None
        finally:
            self.relay.forget(uid, command_id)
        self.ctx.metrics.commands.labels(result=result["status"]).inc()
        self._record(
            EventType.COMMAND_REPLIED,
            actor_type=ActorType.DEVICE,
            actor_id=uid,
            device_uid=uid,
            detail={"id": command_id, "status": result["status"]},
        )
        return result

    def _save_reported(self, uid: str, data: bytes) -> None:
        try:
            reported = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # state must be JSON; anything else is passed on but not kept
        at = datetime.now(UTC)

        async def write(tx: Tx) -> None:
            await store.put_state(tx, uid=uid, reported=reported, reported_at=at)

        self.journal.add(write)

    async def set_desired(self, uid: str, desired: dict[str, Any]) -> datetime:
        now = datetime.now(UTC)
        async with self.ctx.db.write() as tx:
            await store.put_state(tx, uid=uid, desired=desired, desired_at=now)
        await self.broker.publish_internal(f"devices/{uid}/desired", orjson.dumps(desired), retain=True)
        return now

    async def _load_retained_state(self) -> None:
        """Reported and desired state survive a restart: they are retained again from the database."""
        async with self.ctx.db.read() as tx:
            rows = await store.all_states(tx)
        for row in rows:
            if row.reported is not None:
                self.broker.load_retained(f"devices/{row.uid}/state", orjson.dumps(row.reported))
            if row.desired is not None:
                self.broker.load_retained(f"devices/{row.uid}/desired", orjson.dumps(row.desired))
