"""The SDK's way to the server: where each service and the MQTT broker are (one URL, or one per
service), what the server says about its broker, and how a client trusts it over TLS. The clients
themselves are in device_connector.client."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class HandshakeClientError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"{status} {error or body}")


def check(response: httpx.Response) -> Any:
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise HandshakeClientError(response.status_code, body)
    return body


def no_delay(client: mqtt.Client, userdata: Any, sock: mqtt.SocketLike) -> None:
    """paho's `on_socket_open`: TCP_NODELAY on the MQTT socket. paho does not set it, and Nagle's
    algorithm turns a 1 ms QoS 1 exchange into 40-90 ms (PERF §5)."""
    if isinstance(sock, socket.socket):  # a TCP transport (an ssl.SSLSocket under mqtts)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def mqtt_port_of(http: httpx.Client, *, tls: bool = False) -> int:
    """Where the server's own MQTT broker listens (for MQTT over TLS with `tls`), as its /readyz (or
    discovery document) says. The usual 1883 is not assumed: on many machines another broker holds it,
    and a client that reached that one would connect, subscribe and never hear a command."""
    key = "tls_port" if tls else "port"
    offered: set[str] = set()
    for path, name in (("/readyz", "mqtt"), ("/.well-known/openid-configuration", None)):
        try:
            response = http.get(path)
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        except (httpx.HTTPError, ValueError):
            continue
        if not isinstance(body, dict):
            continue
        listener = body.get(name) if name else {"port": body.get("mqtt_port"), "tls_port": body.get("mqtt_tls_port")}
        if not isinstance(listener, dict):
            continue
        offered |= {k for k in ("port", "tls_port") if isinstance(listener.get(k), int)}
        port = listener.get(key)
        if isinstance(port, int) and 0 < port < 65536:
            return port
    raise MqttListenerUnknownError(_no_listener(str(http.base_url), tls=tls, offered=offered))


def _no_listener(url: str, *, tls: bool, offered: set[str]) -> str:
    if tls and "port" in offered:
        return f"{url} serves plaintext MQTT only: pass tls=False (or an http:// URL)"
    if not tls and "tls_port" in offered:
        return f"{url} serves MQTT over TLS only: pass tls=True (or an https:// URL)"
    return f"{url} does not say where its MQTT broker listens: pass mqtt_port"


class MqttListenerUnknownError(LookupError):
    """The server runs no MQTT broker of its own (another service of the deployment does, or a
    clustered broker), or none of the kind asked for (plaintext, TLS): the caller must say."""


def tls_context(ca_file: str | os.PathLike[str] | None = None, *, check_hostname: bool = True) -> ssl.SSLContext:
    """How the SDK trusts the server, for HTTPS and MQTT over TLS alike: certificates verified always,
    against `ca_file` or the system's trusted CAs, and the host name checked unless turned off."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = check_hostname
    return context


class Endpoints:
    """The services a client talks to: one HTTP client per distinct base URL, all trusting the server
    the same way. With one URL for every service, that is one client."""

    def __init__(self, context: ssl.SSLContext, *, timeout: float) -> None:
        self.context = context
        self.timeout = timeout
        self._clients: dict[str, httpx.Client] = {}

    def client(self, url: str) -> httpx.Client:
        url = url.rstrip("/")
        if url not in self._clients:
            self._clients[url] = httpx.Client(base_url=url, timeout=self.timeout, verify=self.context)
        return self._clients[url]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def mqtt_client(client_id: str, context: ssl.SSLContext | None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.on_socket_open = no_delay
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if context is not None:
        client.tls_set_context(context)
    return client


def uses_tls(tls: bool | None, connector_url: str) -> bool:
    # By default MQTT is as private as the HTTP it goes with: an https:// connector means TLS.
    return tls if tls is not None else urlsplit(connector_url).scheme == "https"
