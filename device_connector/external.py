"""The connector's side of an external broker (Mosquitto, EMQX, RabbitMQ): instead of embedding a
broker it connects to one as a client with paho-mqtt, publishes commands and desired state, and hears
replies and reported state. Authentication and ACL are the broker's, through the hooks of
device_connector.routes.hooks."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("handshake.external")

Hook = Callable[..., Awaitable[None] | None]


def _no_delay(client: mqtt.Client, userdata: Any, sock: mqtt.SocketLike) -> None:
    # A TCP transport hands over a socket.socket (an ssl.SSLSocket under mqtts).
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ExternalBroker:
    """Speaks the embedded broker's interface where the connector needs it."""

    def __init__(self, url: str, *, client_id: str = "handshake-connector") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("HANDSHAKE_MQTT_BROKER_URL must look like mqtt://user:password@host:1883")
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.on_socket_open = _no_delay
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.on_connected: list[Hook] = []
        self.on_disconnected: list[Hook] = []
        self.on_published: list[Hook] = []
        self.on_denied: list[Hook] = []
        self.on_refused: list[Hook] = []
        self.sessions: dict[str, Any] = {}
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not await asyncio.to_thread(self._ready.wait, 10):
            self.client.loop_stop()
            raise ConnectionError(f"cannot reach the MQTT broker at {self.host}:{self.port}")

    async def shutdown(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.warning("external broker refused the connector: %s", reason)
            return
        client.subscribe([("devices/+/replies", 1), ("devices/+/state", 1)])
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho's thread: hand the message to the event loop.
        if self._loop is not None:
            payload = bytes(message.payload)
            self._loop.call_soon_threadsafe(self._dispatch, message.topic, payload, bool(message.retain))

    def _dispatch(self, topic: str, data: bytes, retain: bool) -> None:
        for hook in self.on_published:
            result = hook(None, topic, data, retain)
            if result is not None:
                asyncio.ensure_future(result)

    async def publish_internal(self, topic: str, data: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to the external broker failed: {mqtt.error_string(info.rc)}")

    def is_connected(self, client_id: str) -> bool:
        # The external broker knows; we cannot ask it over MQTT. A command to an absent device times out.
        return self.client.is_connected()

    def live_sessions(self) -> list[Any]:
        return []

    def load_retained(self, topic: str, data: bytes, qos: int = 1) -> None:
        """The external broker keeps retained messages itself."""

    def revoke_subscriptions(self, session: Any) -> None:
        """The external broker enforces ACLs through the hooks."""

    async def close_client(self, client_id: str, reason: str) -> bool:
        return False
