"""`handshake demo`: the whole flow against a running server, one printed step at a time."""

from __future__ import annotations

import argparse
import os
import secrets
import threading
import time
from typing import Any

import httpx

from device_connector.client import DeviceClient, HandshakeClientError, MqttListenerUnknownError, UserClient
from shared.cli import fail


def _step(number: int, text: str) -> None:
    print(f"[{number}] {text}", flush=True)


def demo(args: argparse.Namespace) -> None:
    password = args.admin_password or os.environ.get("HANDSHAKE_ADMIN_PASSWORD")
    if not password:
        fail(
            "demo needs an admin or manufacturer to provision a device: pass --admin-password or set HANDSHAKE_ADMIN_PASSWORD"
        )
    try:
        _run(args.url, args.admin, password, args.mqtt_port)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {args.url}: {exc}; start it with `handshake serve`")
    except HandshakeClientError as exc:
        fail(f"the server said {exc}")
    except MqttListenerUnknownError:
        fail(f"{args.url} does not say where its MQTT broker listens: pass --mqtt-port")
    except TimeoutError as exc:
        fail(str(exc))


def _run(url: str, admin_name: str, admin_password: str, mqtt_port: int | None) -> None:
    admin = UserClient(url, mqtt_port=mqtt_port)
    admin.login(admin_name, admin_password)
    _step(1, f"logged in as {admin_name}")
    made: dict[str, Any] = admin.http.post(
        "/v1/admin/devices", json={"model": "demo-plug", "name": "Demo plug"}, headers=admin._auth()
    ).json()
    device_info = made["devices"][0]
    _step(2, f"provisioned device {device_info['uid']} (claim code {device_info['claim_code']})")

    user = UserClient(url, mqtt_port=mqtt_port)
    username, user_password = f"demo-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    user.register(username, user_password)
    user.login(username, user_password)
    _step(3, f"registered and logged in {username}")
    user.bind(device_info["uid"], device_info["claim_code"])
    _step(4, f"{username} bound {device_info['uid']} with its claim code")

    device = DeviceClient(url, device_info["uid"], device_info["secret"], mqtt_port=mqtt_port)
    switched = threading.Event()

    @device.command("switch")
    def switch(params: dict[str, Any]) -> dict[str, Any]:
        device.report_state({"on": bool(params.get("on"))})
        switched.set()
        return {"on": bool(params.get("on"))}

    with device:
        _step(5, f"simulated device connected over MQTT on port {device.mqtt_port} with a device token")
        started = time.perf_counter()
        reply = user.send_command(device_info["uid"], "switch", {"on": True})
        elapsed = (time.perf_counter() - started) * 1000
        _step(6, f"HTTPS command 'switch' answered by the device in {elapsed:.1f} ms: {reply}")
        switched.wait(5)
        time.sleep(0.2)
        _step(7, f"reported state: {user.state(device_info['uid'])['reported']}")
        user.set_desired(device_info["uid"], {"brightness": 80})
        time.sleep(0.3)
        _step(8, f"desired state reached the device: {device.desired}")
        info = user.device(device_info["uid"])
        _step(9, f"presence: online={info['online']} ip={info['ip']} connected_at={info['connected_at']}")
    time.sleep(0.3)
    _step(10, f"device disconnected: online={user.device(device_info['uid'])['online']}")
    user.close()
    admin.close()


def register(commands: Any) -> None:
    cmd = commands.add_parser("demo", help="walk through the whole flow against a running server")
    cmd.add_argument("--url", default="http://127.0.0.1:8000")
    cmd.add_argument("--mqtt-port", type=int, default=None, help="default: the port the server says it listens on")
    cmd.add_argument("--admin", default="admin", help="an admin or manufacturer account")
    cmd.add_argument("--admin-password", help="default: HANDSHAKE_ADMIN_PASSWORD")
    cmd.set_defaults(handler=demo)
