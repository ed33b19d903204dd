"""The connector as an MQTT client of a clustered broker: it publishes commands and desired state and
hears replies and reported state, with paho-mqtt in its own thread (TCP_NODELAY set: PERF §5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_connector.endpoints import no_delay
from shared.errors import ConfigurationError, ServiceUnavailableError

log = logging.getLogger("handshake.mqtt-relay")

OnMessage = Callable[[str, bytes], None]
# Replies and reported state, and fresh tokens renewing live connections (SPEC §12; the broker's ACL
# lets nobody else read these).
SUBSCRIPTIONS = [("devices/+/replies", 1), ("devices/+/state", 1), ("devices/+/token", 1), ("users/+/token", 1)]
RECONNECT_MAX_DELAY = 5
START_TIMEOUT = 10.0  # s for the first CONNACK before start-up gives up on the broker
RETAIN_TIMEOUT = 5.0  # s for the broker's PUBACK of a retained message


class MqttRelay:
    def __init__(self, url: str, *, client_id: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("HANDSHAKE_MQTT_BROKER_URL must look like mqtt://user:password@host:1883")
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if self.username:
            self.client.username_pw_set(self.username, unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.max_inflight_messages_set(1000)
        # paho waits up to 2 minutes between reconnects by default: commands would fail that long after a
        # broker restart. A few seconds at most, and a stop ends the wait within one (loop_stop).
        self.client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_DELAY)
        self.client.on_socket_open = no_delay
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._ready: asyncio.Event | None = None  # set (in the loop) at the first CONNACK that accepts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message_cb: OnMessage | None = None
        self._refusal: str | None = None  # why the broker refused the last CONNECT, if it did
        # Retained publishes awaiting their PUBACK, by message id. `_retaining` counts them from before
        # each publish, so paho's thread hands over every PUBACK that could be theirs, and none otherwise.
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._retaining = 0

    async def start(self, on_message: OnMessage) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_message_cb = on_message
        # Awaited in the loop, not in a thread: a stop signal during start-up cancels the wait at once.
        self._ready = asyncio.Event()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self._ready.wait()
        except BaseException as exc:
            await asyncio.to_thread(self.client.loop_stop)
            if not isinstance(exc, TimeoutError):
                raise
            where = f"the MQTT broker at {self.host}:{self.port}"
            if self._refusal is not None:
                raise ConfigurationError(
                    f"{where} refused the connector ({self._refusal}): fix the user in HANDSHAKE_MQTT_BROKER_URL"
                ) from None
            raise ConfigurationError(
                f"cannot reach {where} within {START_TIMEOUT:.0f} s: start it or fix HANDSHAKE_MQTT_BROKER_URL"
            ) from None

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def connected(self) -> bool:
        return self.client.is_connected()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.warning("the MQTT broker refused the connector: %s", reason)
            self._refusal = str(reason)
            return
        client.subscribe(SUBSCRIPTIONS)  # again after every reconnect
        if self._loop is not None and self._ready is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho's thread: hand the message to the event loop.
        if self._loop is not None and self._on_message_cb is not None:
            self._loop.call_soon_threadsafe(self._on_message_cb, message.topic, bytes(message.payload))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any = None) -> None:
        # paho's thread, at a PUBACK. A command's is not waited for (its reply is), so the loop is only
        # woken while a retained message is in flight.
        if self._retaining and self._loop is not None:
            self._loop.call_soon_threadsafe(self._acked, mid)

    def _acked(self, mid: int) -> None:
        waiter = self._acks.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def publish(self, topic: str, data: bytes, *, retain: bool = False) -> None:
        """Sends a message at QoS 1. A retained one (desired state) returns once the broker holds it: at
        its PUBACK, so whoever subscribes after a 200 gets it as retained."""
        if not retain:
            self._check(self.client.publish(topic, data, qos=1))
            return
        self._retaining += 1
        try:
            info = self.client.publish(topic, data, qos=1, retain=True)
            self._check(info)
            # Registered in the same turn of the loop as the publish: `_acked` runs in a later one.
            waiter = self._acks[info.mid] = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(RETAIN_TIMEOUT):
                    await waiter
            except TimeoutError:
                raise ServiceUnavailableError(
                    f"The MQTT broker did not acknowledge {topic} within {RETAIN_TIMEOUT:.0f} s."
                ) from None
            finally:
                self._acks.pop(info.mid, None)
        finally:
            self._retaining -= 1

    @staticmethod
    def _check(info: mqtt.MQTTMessageInfo) -> None:
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ServiceUnavailableError(f"The MQTT broker is not reachable ({mqtt.error_string(info.rc)}).")
