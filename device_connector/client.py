"""The SDK: a DeviceClient for firmware written in Python and a UserClient for app developers.

    device = DeviceClient("http://127.0.0.1:8000", uid, secret)  # asks the server for its MQTT port

    @device.command("reboot")
    def reboot(params):
        return {"rebooting": True}

    with device:               # gets a device token, connects, renews it over the live connection
        device.report_state({"on": True})

Separate services (`handshake serve --service NAME`): give each client the URL of each service it
talks to, `DeviceClient(device_manager_url, uid, secret, device_connector_url=...)` and
`UserClient(account_manager_url, device_manager_url=..., device_connector_url=...)`; one URL serves an
all-in-one server.

TLS: an https:// device-connector URL means MQTT over TLS as well (`tls=` says otherwise), on the port
the server names for it. `ca_file` is the CA that signed the server's certificate (default: the
system's trusted CAs), for HTTPS and MQTT alike; the server's host name is checked unless
`check_hostname=False`.

Both set TCP_NODELAY on the MQTT socket: paho does not, and Nagle's algorithm turns a 1 ms
request/response into 40-90 ms (PERF §5)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from device_connector.endpoints import (
    Endpoints,
    HandshakeClientError,
    MqttListenerUnknownError,
    check,
    mqtt_client,
    mqtt_port_of,
    tls_context,
    uses_tls,
)

log = logging.getLogger("handshake.client")

CommandHandler = Callable[[dict[str, Any]], Any]
RENEW_BEFORE = 60.0  # s before a token expires that the SDKs renew it (SPEC §12)
RETRY_AFTER = 30.0  # s until a renewal that failed (the server away) is tried again, at most
# CONNACK codes that mean "these credentials are no good" (as paho 2 names MQTT 3.1.1's 4 and 5).
_REFUSED_CREDENTIALS = frozenset({"Bad user name or password", "Not authorized"})
__all__ = [
    "DeviceClient",
    "HandshakeClientError",
    "MqttListenerUnknownError",
    "UserClient",
    "mqtt_port_of",
    "tls_context",
]


class DeviceClient:
    def __init__(
        self,
        base_url: str,
        uid: str,
        secret: str,
        *,
        device_connector_url: str | None = None,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        tls: bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        check_hostname: bool = True,
        keepalive: int = 30,
        renew_before: float = RENEW_BEFORE,
    ) -> None:
        """`base_url`: the server, or with separate services the device manager (it issues device
        tokens); `device_connector_url` (default `base_url`) is where the broker is asked about."""
        self.base_url = base_url.rstrip("/")
        connector_url = device_connector_url or base_url
        self.uid = uid.upper()
        self.secret = secret
        self.mqtt_host = mqtt_host or urlsplit(connector_url).hostname or "127.0.0.1"
        self.mqtt_port = mqtt_port
        self.tls = uses_tls(tls, connector_url)
        self.keepalive = keepalive
        self.renew_before = renew_before  # s before its token expires that a fresh one is sent
        self.endpoints = Endpoints(tls_context(ca_file, check_hostname=check_hostname), timeout=10)
        self.http = self.endpoints.client(self.base_url)
        self.connector = self.endpoints.client(connector_url)
        self.mqtt = mqtt_client(self.uid, self.endpoints.context if self.tls else None)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.on_message = self._on_message
        self.connected = threading.Event()  # connected, and subscribed to its commands and desired state
        self._subscription: int | None = None  # the message id of that SUBSCRIBE
        self.token_expires_at = 0.0
        self._handlers: dict[str, CommandHandler] = {}
        self._desired_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._renewer: threading.Timer | None = None
        self._stopped = False
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
        body = check(self.http.post("/v1/devices/token", json={"uid": self.uid, "secret": self.secret}))
        self.token_expires_at = time.time() + int(body["expires_in"])
        self.mqtt.username_pw_set(self.uid, body["access_token"])
        return str(body["access_token"])

    def start(self, timeout: float = 10) -> None:
        self.fetch_token()
        if self.mqtt_port is None:
            self.mqtt_port = mqtt_port_of(self.connector, tls=self.tls)
        self.mqtt.connect(self.mqtt_host, self.mqtt_port, keepalive=self.keepalive)
        self.mqtt.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"device {self.uid} could not connect to {self.mqtt_host}:{self.mqtt_port}")
        self._schedule_renewal()

    def stop(self) -> None:
        self._stopped = True
        if self._renewer is not None:
            self._renewer.cancel()
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        self.http.close()
        self.endpoints.close()

    def __enter__(self) -> DeviceClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _schedule_renewal(self, *, failed: bool = False) -> None:
        if not self._stopped:
            self._renewer = renewal_timer(self.token_expires_at, self._renew, before=self.renew_before, failed=failed)

    def _renew(self) -> None:
        """A fresh token a minute before the old one expires, handed to the broker over the live
        connection (SPEC §12): the connection lives on, with no reconnect and no gap. A connection
        that is down meanwhile reconnects with the fresh token."""
        if self._stopped:
            return
        try:
            token = self.fetch_token()
            if self.mqtt.is_connected():
                self.mqtt.publish(f"devices/{self.uid}/token", token, qos=1)
        except Exception as exc:  # the broker closes us at expiry; paho reconnects with the token it has
            log.warning("token renewal for %s failed: %s", self.uid, exc)
            self._schedule_renewal(failed=True)
            return
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
        _, self._subscription = client.subscribe(
            [(f"devices/{self.uid}/commands", 1), (f"devices/{self.uid}/desired", 1)]
        )

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any = None) -> None:
        # Ready once the broker has the subscription: a command sent between the CONNACK and the SUBACK
        # had nobody to go to (the demo's first command, once, timed out so).
        if mid == self._subscription:
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


def renewal_timer(
    expires_at: float, renew: Callable[[], None], *, before: float = RENEW_BEFORE, failed: bool = False
) -> threading.Timer:
    """A timer for `renew`, `before` seconds before `expires_at` (half the time left for a token that
    lives less than that; sooner again after a failure, while the token still lives)."""
    left = expires_at - time.time()
    delay = left - before if left - before >= 1 else left / 2
    if failed:
        delay = min(RETRY_AFTER, left / 2)
    timer = threading.Timer(max(1.0, delay), renew)
    timer.daemon = True
    timer.start()
    return timer


class UserClient:
    """An app's view: log in over HTTPS, bind and command devices, watch their state over MQTT."""

    def __init__(
        self,
        base_url: str,
        *,
        device_manager_url: str | None = None,
        device_connector_url: str | None = None,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        tls: bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        check_hostname: bool = True,
        renew_before: float = RENEW_BEFORE,
    ) -> None:
        """`base_url`: the server, or with separate services the account manager; the device manager
        (devices, binding) and the device connector (commands, state, MQTT) default to it."""
        self.base_url = base_url.rstrip("/")
        connector_url = device_connector_url or base_url
        # Commands wait up to 60 s for a device: the HTTP timeout is longer.
        self.endpoints = Endpoints(tls_context(ca_file, check_hostname=check_hostname), timeout=70)
        self.http = self.endpoints.client(self.base_url)
        self.device_manager = self.endpoints.client(device_manager_url or base_url)
        self.device_connector = self.endpoints.client(connector_url)
        self.mqtt_host = mqtt_host or urlsplit(connector_url).hostname or "127.0.0.1"
        self.mqtt_port = mqtt_port
        self.tls = uses_tls(tls, connector_url)
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.access_expires_at = 0.0
        self.renew_before = renew_before  # s before the access token expires that MQTT gets a fresh one
        self.user_id: str | None = None
        self._mqtt: mqtt.Client | None = None
        self._renewal_topic: str | None = None
        self._renewer: threading.Timer | None = None
        self._closed = False

    def _auth(self) -> dict[str, str]:
        if self.access_token is None:
            raise HandshakeClientError(401, {"error": "not_logged_in"})
        return {"Authorization": f"Bearer {self.access_token}"}

    def _take(self, pair: dict[str, Any]) -> dict[str, Any]:
        self.access_token, self.refresh_token = pair["access_token"], pair["refresh_token"]
        self.access_expires_at = time.time() + int(pair.get("expires_in", 0))
        if self._mqtt is not None and self.user_id is not None:
            self._mqtt.username_pw_set(self.user_id, self.access_token)  # for a reconnect
        return pair

    def register(self, username: str, password: str) -> dict[str, Any]:
        body: dict[str, Any] = check(
            self.http.post("/v1/auth/register", json={"username": username, "password": password})
        )
        return body

    def login(
        self,
        username: str,
        password: str,
        *,
        code: str | Callable[[], str] | None = None,
        recovery_code: str | None = None,
    ) -> dict[str, Any]:
        """Log in. For an account with a second factor pass `code` (or a function that returns one, asked
        only when the server wants it) or `recovery_code`; without either, the server's 401
        `mfa_required` is raised, and its `mfa_token` (in the error's body) goes to `login_mfa`."""
        response = self.http.post("/v1/auth/login", json={"username": username, "password": password})
        if response.status_code == 401 and (code is not None or recovery_code is not None):
            body = response.json()
            if isinstance(body, dict) and body.get("error") == "mfa_required":
                typed = code() if callable(code) else code
                return self.login_mfa(str(body["mfa_token"]), code=typed, recovery_code=recovery_code)
        return self._logged_in(check(response))

    def login_mfa(self, mfa_token: str, *, code: str | None = None, recovery_code: str | None = None) -> dict[str, Any]:
        """The second step of a login: the `mfa_token` of a 401 `mfa_required` and a code (or a recovery code)."""
        factor = {"code": code} if code is not None else {"recovery_code": recovery_code}
        return self._logged_in(check(self.http.post("/v1/auth/mfa", json={"mfa_token": mfa_token, **factor})))

    def _logged_in(self, pair: dict[str, Any]) -> dict[str, Any]:
        self._take(pair)
        self.user_id = check(self.http.get("/v1/users/me", headers=self._auth()))["id"]
        return pair

    def refresh(self) -> dict[str, Any]:
        return self._take(check(self.http.post("/v1/auth/refresh", json={"refresh_token": self.refresh_token})))

    def provision(self, model: str, *, count: int = 1, name: str | None = None) -> list[dict[str, Any]]:
        """As an admin or manufacturer: new devices, each `{uid, secret, claim_code}` (shown only now)."""
        body = {"model": model, "count": count, **({"name": name} if name else {})}
        made: list[dict[str, Any]] = check(
            self.device_manager.post("/v1/admin/devices", json=body, headers=self._auth())
        )["devices"]
        return made

    def bind(self, uid: str, claim_code: str) -> dict[str, Any]:
        body: dict[str, Any] = check(
            self.device_manager.post(
                "/v1/devices/bind", json={"uid": uid, "claim_code": claim_code}, headers=self._auth()
            )
        )
        return body

    def devices(self) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = check(self.device_manager.get("/v1/devices", headers=self._auth()))
        return body

    def device(self, uid: str) -> dict[str, Any]:
        body: dict[str, Any] = check(self.device_manager.get(f"/v1/devices/{uid}", headers=self._auth()))
        return body

    def send_command(
        self, uid: str, action: str, params: dict[str, Any] | None = None, timeout: int = 10
    ) -> dict[str, Any]:
        body = {"action": action, "params": params or {}, "timeout": timeout}
        reply: dict[str, Any] = check(
            self.device_connector.post(f"/v1/devices/{uid}/commands", json=body, headers=self._auth())
        )
        return reply

    def state(self, uid: str) -> dict[str, Any]:
        body: dict[str, Any] = check(self.device_connector.get(f"/v1/devices/{uid}/state", headers=self._auth()))
        return body

    def set_desired(self, uid: str, desired: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = check(
            self.device_connector.put(f"/v1/devices/{uid}/state/desired", json=desired, headers=self._auth())
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
        client = mqtt_client(f"{self.user_id}-app", self.endpoints.context if self.tls else None)
        client.username_pw_set(self.user_id, self.access_token)
        ready = threading.Event()
        client.on_connect = lambda c, u, f, reason, p=None: ready.set() if not reason.is_failure else None
        # The server's own (embedded) broker takes a fresh token on `$handshake/token`; a broker
        # named by the caller may be a clustered one, which cannot route `$` topics (SPEC §12).
        self._renewal_topic = f"users/{self.user_id}/token"
        if self.mqtt_port is None:
            self.mqtt_port = mqtt_port_of(self.device_connector, tls=self.tls)
            self._renewal_topic = "$handshake/token"
        client.connect(self.mqtt_host, self.mqtt_port)
        client.loop_start()
        if not ready.wait(timeout):
            client.loop_stop()
            raise TimeoutError("could not connect to the broker")
        self._mqtt = client
        self._renewer = renewal_timer(self.access_expires_at, self._renew, before=self.renew_before)
        return client

    def _renew(self) -> None:
        """A fresh access token of the same session a minute before the old one expires, handed to the
        broker over the live connection (SPEC §12), and used for HTTPS from then on."""
        if self._closed:
            return
        try:
            self.refresh()
            client = self._mqtt
            if client is not None and client.is_connected() and self._renewal_topic and self.access_token:
                client.publish(self._renewal_topic, self.access_token, qos=1)
        except Exception as exc:
            log.warning("token renewal for user %s failed: %s", self.user_id, exc)
            self._renewer = renewal_timer(self.access_expires_at, self._renew, before=self.renew_before, failed=True)
            return
        self._renewer = renewal_timer(self.access_expires_at, self._renew, before=self.renew_before)

    def close(self) -> None:
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
        if self._mqtt is not None:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
        self.endpoints.close()

    def __enter__(self) -> UserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
