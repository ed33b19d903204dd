"""The device connector's runtime: an MQTT broker behind the broker port (device_connector.port) and
what keeps it in step with the platform: presence, the command relay, persisted state, closing
connections whose token expired or whose session, token or device was revoked, and narrowing live
grants when roles on a device change. Nothing here knows which broker runs."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from device_connector import store
from device_connector.acl import payload_refusal, role_lost
from device_connector.gate import is_device_name
from device_connector.journal import Journal, NewEvent, Reported
from device_connector.port import Broker, CloseReason, Connection
from device_connector.presence import Presence
from device_connector.relay import Relay
from device_connector.renewal import Renewals, connections_of, target_of
from shared import background, jsonlimits
from shared.context import Context
from shared.errors import DeviceOfflineError, DeviceTimeoutError
from shared.events import event_row
from shared.models import ActorType, DeviceRole, EventType
from shared.registry import Key

log = logging.getLogger("handshake.connector")
SWEEP_INTERVAL = 0.5
SWEEP_SLICE = 500  # connections checked between two turns of the event loop
# MQTT_BROKER -> the adapter implementing the port (imported only when chosen: an embedded broker
# patches amqtt, a clustered one does not load it).
ADAPTERS = {
    "embedded": "device_connector.broker.embedded:EmbeddedBroker",
    "rabbitmq": "device_connector.rabbitmq:RabbitBroker",
    "emqx": "device_connector.emqx:EmqxBroker",
}


def topic_parts(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "devices" else None


def build_broker(ctx: Context) -> Broker:
    module, name = ADAPTERS[ctx.settings.mqtt_broker].split(":")
    broker: Broker = getattr(importlib.import_module(module), name)(ctx)
    return broker


class Connector:
    def __init__(self, ctx: Context, broker: Broker | None = None) -> None:
        self.ctx = ctx
        self.broker = broker if broker is not None else build_broker(ctx)
        self.journal = Journal(ctx)
        self.presence = Presence(ctx, self.journal)
        self.relay = Relay()
        self.renewals = Renewals(ctx, self._refused_renewal)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.journal.start()
        await self.broker.start(self)  # (amqtt's start clears retained messages: load them after)
        await self._load_retained_state()
        self._tasks.append(asyncio.create_task(self._sweep(), name="handshake-mqtt-sweep"))
        self._tasks.append(asyncio.create_task(self._follow_access(), name="handshake-mqtt-access"))
        # Not awaited: a stop during start-up must not wait for it, and a stop signal in that window
        # cancelled the database work of the tasks above mid-statement (aiosqlite then answered a loop
        # that had closed). A CONNECT in the first moments opens the table itself, as before.
        self._tasks.append(asyncio.create_task(self.presence.regions.load(), name="handshake-geoip"))

    def ready(self) -> bool:
        """For /readyz: the embedded broker is serving, or the clustered one is reachable."""
        return self.broker.ready()

    async def stop(self) -> None:
        await background.stop(*self._tasks)
        await self.renewals.stop()
        await self.broker.stop()
        await self.journal.stop()

    # --- events from the broker (device_connector.port.BrokerEvents) -------------------------------

    def connected(self, conn: Connection) -> None:
        self.ctx.metrics.mqtt_connections.inc()
        if conn.is_device and conn.recorder:
            self.presence.connected(conn.client_id, conn.ip)

    def disconnected(self, conn: Connection, reason: CloseReason) -> None:
        self.ctx.metrics.mqtt_connections.dec()
        if conn.is_device:
            self.relay.on_device_gone(conn.client_id)
            if conn.recorder and not self.broker.is_online(conn.client_id):  # a takeover keeps it online
                self.presence.disconnected(conn.client_id, conn.ip, reason)

    def census(self, live: Iterable[Connection]) -> None:
        # Through the journal: a connect heard before this is written before it, one heard after, after.
        self.presence.census({conn.client_id: conn.ip for conn in live if conn.is_device})

    def subscribed(self, client_id: str, topic: str) -> None:
        """A broker that keeps retained messages on one node only: a device subscribing to its desired
        state gets it from the database now (SPEC §6, "On a clustered broker")."""
        parts = topic_parts(topic)
        if parts is not None and parts == (client_id, "desired"):
            self._tasks.append(asyncio.create_task(self._send_desired(client_id)))
            self._tasks = [task for task in self._tasks if not task.done()]

    async def _send_desired(self, uid: str) -> None:
        try:
            async with self.ctx.db.read() as tx:
                row = await store.get_state(tx, uid=uid)
            data = jsonlimits.dumps_or_none(row.desired) if row is not None and row.desired is not None else None
            if data is not None:
                await self.broker.publish(f"devices/{uid}/desired", data, retain=True)
        except Exception as exc:
            log.warning("could not send %s its desired state: %r", uid, exc)

    def published(self, conn: Connection | None, topic: str, data: bytes) -> None:
        if topic.endswith("/token"):  # every renewal topic ends so; one test per publish on the hot path
            self._renewal(conn, topic, data)
            return
        parts = topic_parts(topic)
        if parts is None:
            return
        uid, channel = parts
        if channel in ("replies", "state") and not self.broker.checks_payloads:
            # A clustered broker delivered it (the embedded one drops it itself): here it is neither
            # relayed to an HTTP caller nor stored.
            refusal = payload_refusal(topic, data)
            if refusal is not None:
                if conn is not None:
                    self.denied(conn, topic, reason=refusal)
                return
        if channel == "replies":
            self.relay.on_reply(uid, data)
        elif channel == "state":
            self._save_reported(uid, data)

    def denied(self, conn: Connection, topic: str, *, reason: str | None = None) -> None:
        parts = topic_parts(topic)
        detail = {"topic": topic[:256], "action": "publish"}
        if reason is not None:
            detail["reason"] = reason
        self._record(
            EventType.ACL_DENIED,
            actor_type=ActorType.DEVICE if conn.is_device else ActorType.USER,
            actor_id=conn.client_id,
            device_uid=parts[0][:20] if parts else None,
            ip=conn.ip,
            detail=detail,
        )

    def refused(self, *, client_id: str, username: str | None, ip: str | None, reason: str) -> None:
        # A refused device is on its own timeline (the name is a well-formed UID; whether such a
        # device exists is not looked up on this path, which a CONNECT flood runs on).
        device_uid = username if username is not None and is_device_name(username) else None
        self._record(
            EventType.MQTT_AUTH_FAILED,
            actor_type=ActorType.SYSTEM,
            actor_id=(username or "")[:64] or None,
            device_uid=device_uid,
            ip=ip,
            detail={"client_id": client_id[:64], "reason": reason},
        )

    def _renewal(self, conn: Connection | None, topic: str, data: bytes) -> None:
        """A fresh token published on a renewal topic (SPEC §12): by `conn` (the embedded broker checked
        the topic is its own), or heard as a subscriber of a clustered broker (the topic names whose)."""
        target = target_of(topic, conn)
        if target is None:
            return
        conns = [conn] if conn is not None else connections_of(target, self.broker.connections())
        if conn is None:
            conns = [c for c in conns if c.recorder] + [c for c in conns if not c.recorder]
        self.renewals.heard(target, data, conns, self._renewed)

    def _renewed(self, conn: Connection) -> None:
        self._tasks.append(asyncio.create_task(self._tell_broker_renewed(conn)))
        self._tasks = [task for task in self._tasks if not task.done()]

    async def _tell_broker_renewed(self, conn: Connection) -> None:
        try:
            await self.broker.renewed(conn)
        except Exception as exc:  # the connection lives on here; other replicas keep the old deadline
            log.warning("could not share the renewed token of %s: %r", conn.client_id, exc)

    def _refused_renewal(self, conn: Connection, reason: str) -> None:
        if conn.recorder:
            self.refused(client_id=conn.client_id, username=conn.username, ip=conn.ip, reason=reason)

    def _record(self, type: EventType, **kwargs: Any) -> None:
        self.journal.add(NewEvent(event_row(type, **kwargs)))

    # --- keeping connections honest ---------------------------------------------------------------

    async def _sweep(self) -> None:
        """Close what may no longer be connected: expired tokens, revoked sessions, disabled devices.
        Reading the in-memory revocation view makes this cheap enough to run twice a second."""
        revocations, keys = self.ctx.revocations, self.ctx.keys
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.time()
            for i, conn in enumerate(list(self.broker.connections())):
                if i % SWEEP_SLICE == SWEEP_SLICE - 1:
                    await asyncio.sleep(0)  # 10,000 connections in one go held the loop ~20 ms
                if conn.close_reason is not None:
                    continue  # being closed already
                claims = conn.claims
                reason = None
                if now > claims.exp:
                    reason = CloseReason.TOKEN_EXPIRED
                elif (revoked := revocations.revoked(claims)) is not None:
                    reason = CloseReason(revoked)
                elif claims.kid not in keys.by_kid:  # `keys revoke`: every token it signed is refused
                    reason = CloseReason.REVOKED
                if reason is not None:
                    try:
                        await self.broker.close(conn, reason)
                    except Exception as exc:  # the adapter retries what it could not do
                        log.warning("closing %s (%s) failed: %r", conn.client_id, reason, exc)
                    background.honour_cancel()  # a broker's client library may swallow the stop

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
            await self.apply_roles(uid, roles)

    async def apply_roles(self, uid: str, roles: dict[str, DeviceRole]) -> None:
        for conn in list(self.broker.connections()):
            grants = conn.grants
            if grants.user_id is None:
                continue
            before, role = grants.roles.get(uid), roles.get(grants.user_id)
            if role is None:
                grants.roles.pop(uid, None)
            else:
                grants.roles[uid] = role
            if role_lost(before, role):
                try:
                    await self.broker.narrow(conn)
                except Exception as exc:
                    log.warning("narrowing %s after a role change failed: %r", conn.client_id, exc)

    # --- commands and state ------------------------------------------------------------------------

    async def send_command(
        self,
        *,
        uid: str,
        action: str,
        params: dict[str, Any],
        timeout: float,  # noqa: ASYNC109 - SPEC's command timeout: its expiry is recorded, then 504
        actor_id: str,
        ip: str | None,
    ) -> dict[str, Any]:
        if not self.broker.is_online(uid):
            self.ctx.metrics.child(self.ctx.metrics.commands, "offline").inc()
            raise DeviceOfflineError()
        command_id, reply = self.relay.expect(uid)
        try:
            body = orjson.dumps({"id": command_id, "action": action, "params": params})
            await self.broker.publish(f"devices/{uid}/commands", body)
            self._record(
                EventType.COMMAND_SENT,
                actor_type=ActorType.USER,
                actor_id=actor_id,
                device_uid=uid,
                ip=ip,
                detail={"id": command_id, "action": action},
            )
            try:
                async with asyncio.timeout(timeout):
                    result = await reply
            except TimeoutError:
                self.ctx.metrics.child(self.ctx.metrics.commands, "timeout").inc()
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
        self.ctx.metrics.child(self.ctx.metrics.commands, result["status"]).inc()
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
        self.journal.add(Reported(uid, reported, datetime.now(UTC)))

    async def set_desired(self, uid: str, desired: dict[str, Any]) -> datetime:
        data = orjson.dumps(desired)  # before anything is stored: a document that cannot be sent is not kept
        now = datetime.now(UTC)
        async with self.ctx.db.write() as tx:
            await store.put_state(tx, uid=uid, desired=desired, desired_at=now)
        await self.broker.publish(f"devices/{uid}/desired", data, retain=True)
        return now

    async def _load_retained_state(self) -> None:
        """Reported and desired state survive a restart: they are retained again from the database."""
        async with self.ctx.db.read() as tx:
            rows = await store.all_states(tx)
        for row in rows:
            for channel, value in (("state", row.reported), ("desired", row.desired)):
                if value is None:
                    continue
                data = jsonlimits.dumps_or_none(value)
                if data is None:
                    # Stored before documents were bounded: one device's state must not stop a start.
                    log.warning("not retaining %s's %s: it cannot be written back as JSON", row.uid, channel)
                    continue
                self.broker.load_retained(f"devices/{row.uid}/{channel}", data)


# The process's connector, once the device connector service has started it.
CONNECTOR = Key[Connector]("connector")
