"""The SDK: a DeviceClient for firmware written in Python and a UserClient for app developers.

    device = DeviceClient("http://127.0.0.1:8000", uid, secret)  # asks the server for its MQTT port

    @device.command("reboot")
    def reboot(params):
        return {"rebooting": True}

    with device:               # gets a device token, connects, renews it before it expires
        device.report_state({"on": True})

Both set TCP_NODELAY on the MQTT socket: paho does not, and Nagle's algorithm turns a 1 ms
request/response into 40-90 ms (PERF §5)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("handshake.client")

CommandHandler = Callable[[dict[str, Any]], Any]
RENEW_AT = 0.8  # renew a token when 80% of its lifetime has passed
# CONNACK codes that mean "these credentials are no good" (as paho 2 names MQTT 3.1.1's 4 and 5).
_REFUSED_CREDENTIALS = frozenset({"Bad user name or password", "Not authorized"})


class HandshakeClientError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"{status} {error or body}")


def _check(response: httpx.Response) -> Any:
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise HandshakeClientError(response.status_code, body)
    return body


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def mqtt_port_of(http: httpx.Client) -> int:
    """Where the server's own MQTT broker listens, as its /readyz (or discovery document) says. The
    usual 1883 is not assumed: on many machines another broker holds it, and a client that reached
    that one would connect, subscribe and never hear a command."""
    for path, key in (("/readyz", "mqtt"), ("/.well-known/openid-configuration", "mqtt_port")):
        try:
            response = http.get(path)
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        except (httpx.HTTPError, ValueError):
            continue
        found = body.get(key) if isinstance(body, dict) else None
        port = found.get("port") if isinstance(found, dict) else found
        if isinstance(port, int) and 0 < port < 65536:
            return port
    raise MqttListenerUnknownError(f"{http.base_url} does not say where its MQTT broker listens: pass mqtt_port")


class MqttListenerUnknownError(LookupError):
    """The server runs no MQTT broker of its own (another service of the deployment does, or a
    clustered broker): the caller must name the port."""


def _mqtt_client(client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.on_socket_open = _no_delay
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


class DeviceClient:
    def __init__(
        self,
        base_url: str,
        uid: str,
        secret: str,
        *,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        keepalive: int = 30,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.uid = uid.upper()
        self.secret = secret
        self.mqtt_host = mqtt_host or urlsplit(base_url).hostname or "127.0.0.1"
        self.mqtt_port = mqtt_port
        self.keepalive = keepalive
        self.http = httpx.Client(base_url=self.base_url, timeout=10)
        self.mqtt = _mqtt_client(self.uid)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_message = self._on_message
        self.connected = threading.Event()
        self.token_expires_at = 0.0
        self._handlers: dict[str, CommandHandler] = {}
        self._desired_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._renewer: threading.Timer | None = None
        self._fetching = threading.Lock()
        self.desired: dict[str, Any] | None = None

    # --- what firmware registers ------------------------------------------------------------------

    def command(self, action: str) -> Callable[[CommandHandler], CommandHandler]:
        """Register the handler of one action; its return value is the reply's `result`."""

        def register(handler: CommandHandler) -> CommandHandler:
            self._handlers[action] = handler
            return handler

        return register

    def on_desired(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        self._desired_callbacks.append(callback)
        return callback

    # --- lifecycle ---------------------------------------------------------------------------------

    def fetch_token(self) -> str:
        body = _check(self.http.post("/v1/devices/token", json={"uid": self.uid, "secret": self.secret}))
        self.token_expires_at = time.time() + int(body["expires_in"])
        self.mqtt.username_pw_set(self.uid, body["access_token"])
        return str(body["access_token"])

    def start(self, timeout: float = 10) -> None:
        self.fetch_token()
        if self.mqtt_port is None:
            self.mqtt_port = mqtt_port_of(self.http)
        self.mqtt.connect(self.mqtt_host, self.mqtt_port, keepalive=self.keepalive)
        self.mqtt.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"device {self.uid} could not connect to {self.mqtt_host}:{self.mqtt_port}")
        self._schedule_renewal()

    def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        self.http.close()

    def __enter__(self) -> DeviceClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _schedule_renewal(self) -> None:
        lifetime = max(1.0, self.token_expires_at - time.time())
        self._renewer = threading.Timer(lifetime * RENEW_AT, self._renew)
        self._renewer.daemon = True
        self._renewer.start()

    def _renew(self) -> None:
        """A fresh token before the old one expires; MQTT 3.1.1 has no re-authentication, so reconnect."""
        try:
            self.fetch_token()
            self.connected.clear()
            self.mqtt.reconnect()
        except Exception as exc:  # the broker closes us at expiry; paho reconnects with the new token
            log.warning("token renewal for %s failed: %s", self.uid, exc)
        self._schedule_renewal()

    # --- MQTT ---------------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.warning("device %s refused: %s", self.uid, reason)
            if str(reason) in _REFUSED_CREDENTIALS:
                # The token went bad (the device was disabled and enabled again, its key revoked...):
                # the next automatic reconnect goes with a fresh one, not the same refused token.
                self._fetch_in_background()
            return
        client.subscribe([(f"devices/{self.uid}/commands", 1), (f"devices/{self.uid}/desired", 1)])
        self.connected.set()

    def _fetch_in_background(self) -> None:
        if self._fetching.acquire(blocking=False):

            def fetch() -> None:
                try:
                    self.fetch_token()
                except Exception as exc:  # a disabled device stays refused: paho keeps retrying
                    log.warning("device %s could not get a fresh token: %s", self.uid, exc)
                finally:
                    self._fetching.release()

            threading.Thread(target=fetch, name=f"handshake-token-{self.uid}", daemon=True).start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if message.topic.endswith("/desired") and isinstance(body, dict):
            self.desired = body
            for callback in self._desired_callbacks:
                callback(body)
        elif message.topic.endswith("/commands") and isinstance(body, dict):
            self._dispatch(body)

    def _dispatch(self, command: dict[str, Any]) -> None:
        handler = self._handlers.get(str(command.get("action")))
        reply: dict[str, Any] = {"id": command.get("id")}
        if handler is None:
            reply.update(status="error", result={"error": "unknown_action"})
        else:
            try:
                reply.update(status="ok", result=handler(command.get("params") or {}))
            except Exception as exc:
                reply.update(status="error", result={"error": type(exc).__name__, "detail": str(exc)})
        self.mqtt.publish(f"devices/{self.uid}/replies", json.dumps(reply), qos=1)

    def report_state(self, state: dict[str, Any]) -> None:
        self.mqtt.publish(f"devices/{self.uid}/state", json.dumps(state), qos=1, retain=True)

    def publish_event(self, event: dict[str, Any]) -> None:
        self.mqtt.publish(f"devices/{self.uid}/events", json.dumps(event), qos=1)


class UserClient:
    """An app's view: log in over HTTPS, bind and command devices, watch their state over MQTT."""

    def __init__(self, base_url: str, *, mqtt_host: str | None = None, mqtt_port: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=70)
        self.mqtt_host = mqtt_host or urlsplit(base_url).hostname or "127.0.0.1"
        self.mqtt_port = mqtt_port
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.user_id: str | None = None
        self._mqtt: mqtt.Client | None = None

    def _auth(self) -> dict[str, str]:
        if self.access_token is None:
            raise HandshakeClientError(401, {"error": "not_logged_in"})
        return {"Authorization": f"Bearer {self.access_token}"}

    def _take(self, pair: dict[str, Any]) -> dict[str, Any]:
        self.access_token, self.refresh_token = pair["access_token"], pair["refresh_token"]
        return pair

    def register(self, username: str, password: str) -> dict[str, Any]:
        body: dict[str, Any] = _check(
            self.http.post("/v1/auth/register", json={"username": username, "password": password})
        )
        return body

    def login(self, username: str, password: str) -> dict[str, Any]:
        pair = self._take(_check(self.http.post("/v1/auth/login", json={"username": username, "password": password})))
        self.user_id = _check(self.http.get("/v1/users/me", headers=self._auth()))["id"]
        return pair

    def refresh(self) -> dict[str, Any]:
        return self._take(_check(self.http.post("/v1/auth/refresh", json={"refresh_token": self.refresh_token})))

    def bind(self, uid: str, claim_code: str) -> dict[str, Any]:
        body: dict[str, Any] = _check(
            self.http.post("/v1/devices/bind", json={"uid": uid, "claim_code": claim_code}, headers=self._auth())
        )
        return body

    def devices(self) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = _check(self.http.get("/v1/devices", headers=self._auth()))
        return body

    def device(self, uid: str) -> dict[str, Any]:
        body: dict[str, Any] = _check(self.http.get(f"/v1/devices/{uid}", headers=self._auth()))
        return body

    def send_command(
        self, uid: str, action: str, params: dict[str, Any] | None = None, timeout: int = 10
    ) -> dict[str, Any]:
        body = {"action": action, "params": params or {}, "timeout": timeout}
        reply: dict[str, Any] = _check(self.http.post(f"/v1/devices/{uid}/commands", json=body, headers=self._auth()))
        return reply

    def state(self, uid: str) -> dict[str, Any]:
        body: dict[str, Any] = _check(self.http.get(f"/v1/devices/{uid}/state", headers=self._auth()))
        return body

    def set_desired(self, uid: str, desired: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = _check(
            self.http.put(f"/v1/devices/{uid}/state/desired", json=desired, headers=self._auth())
        )
        return body

    def watch_state(self, uid: str, callback: Callable[[dict[str, Any]], None], timeout: float = 10) -> None:
        """Call `callback` with each reported state of the device (the retained one first)."""
        client = self._connect_mqtt(timeout)

        def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            try:
                callback(json.loads(message.payload))
            except ValueError:
                pass

        client.message_callback_add(f"devices/{uid}/state", on_message)
        client.subscribe(f"devices/{uid}/state", qos=1)

    def _connect_mqtt(self, timeout: float) -> mqtt.Client:
        if self._mqtt is not None:
            return self._mqtt
        if self.user_id is None or self.access_token is None:
            raise HandshakeClientError(401, {"error": "not_logged_in"})
        client = _mqtt_client(f"{self.user_id}-app")
        client.username_pw_set(self.user_id, self.access_token)
        ready = threading.Event()
        client.on_connect = lambda c, u, f, reason, p=None: ready.set() if not reason.is_failure else None
        if self.mqtt_port is None:
            self.mqtt_port = mqtt_port_of(self.http)
        client.connect(self.mqtt_host, self.mqtt_port)
        client.loop_start()
        if not ready.wait(timeout):
            client.loop_stop()
            raise TimeoutError("could not connect to the broker")
        self._mqtt = client
        return client

    def close(self) -> None:
        if self._mqtt is not None:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
        self.http.close()

    def __enter__(self) -> UserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
