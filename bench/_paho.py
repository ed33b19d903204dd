"""Benchmark helper: paho-mqtt clients as the SDK makes them (MQTT 3.1.1, clean session, TCP_NODELAY), with
CONNECT and SUBSCRIBE that wait for their answer, a close that never raises, and one bare CONNECT+DISCONNECT
without a loop thread (thousands of them, a few threads at a time)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench._proc import HOST
from device_connector.endpoints import no_delay

SUCCESS = "Success"


def new_client(client_id: str, username: str | None = None, password: str | None = None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    client.on_socket_open = no_delay  # paho does not set TCP_NODELAY (PERF §5)
    if username is not None:
        client.username_pw_set(username, password)
    return client


def _answered(client: mqtt.Client, callback: str, send: Callable[[], object], timeout: float) -> Any:
    """Send a packet and wait for the broker's answer (CONNACK, SUBACK) with the client's loop thread running:
    the reason (or reasons) paho hands `callback`; None after `timeout`."""
    answered = threading.Event()
    answers: list[Any] = []

    def on_answer(c: mqtt.Client, userdata: Any, flags_or_mid: Any, reason: Any, props: Any = None) -> None:
        answers.append(reason)
        answered.set()

    setattr(client, callback, on_answer)
    send()
    return answers[0] if answered.wait(timeout) else None


def connect_blocking(client: mqtt.Client, port: int, timeout: float = 10.0) -> None:
    """connect and wait for CONNACK with the client's own loop thread running."""

    def send() -> None:
        client.connect(HOST, port, keepalive=60)
        client.loop_start()

    reason = _answered(client, "on_connect", send, timeout)
    if reason is None or reason.is_failure:
        client.loop_stop()
        raise RuntimeError(f"CONNECT to {port} refused or timed out: {[str(reason)] if reason is not None else []}")


def subscribe_blocking(client: mqtt.Client, filters: list[tuple[str, int]], timeout: float = 10.0) -> None:
    codes = _answered(client, "on_subscribe", lambda: client.subscribe(filters), timeout)
    if codes is None:
        raise RuntimeError("no SUBACK")
    refused = [f for (f, _), code in zip(filters, codes, strict=False) if code.is_failure]
    if refused:
        raise RuntimeError(f"subscriptions refused: {refused[:3]} ({len(refused)} in all)")


def close(client: mqtt.Client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    with contextlib.suppress(Exception):
        client.loop_stop()


def connect_disconnect(port: int, client_id: str, username: str | None, password: str | None) -> str:
    """One CONNECT, its CONNACK, a DISCONNECT; returns the CONNACK's reason ("Success", "Server
    unavailable"...; "no CONNACK" after 10 s). No loop thread: paho writes at once, `loop` reads."""
    client = new_client(client_id, username, password)
    codes: list[str] = []
    client.on_connect = lambda c, u, f, reason, p=None: codes.append(str(reason))
    try:
        client.connect(HOST, port, keepalive=60)
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        if codes and codes[0] == SUCCESS:
            client.disconnect()
    except OSError as exc:
        codes.append(type(exc).__name__)
    finally:
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        for pair in (client._sockpairR, client._sockpairW):  # paho's wake-up socket pair, one per client
            if pair is not None:
                with contextlib.suppress(OSError):
                    pair.close()
    return codes[0] if codes else "no CONNACK"
