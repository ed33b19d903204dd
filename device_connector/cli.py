"""`handshake demo`: the whole flow against a running server, one printed step at a time. Against
separate services it takes the account manager's, the device manager's and the device connector's URL
each; against a server with a private CA, that CA."""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp

from device_connector.client import DeviceClient, HandshakeClientError, MqttListenerUnknownError, UserClient
from shared.cli import fail


@dataclass(frozen=True)
class Target:
    """Where the demo goes: the server (or its account manager), the other services, and its trust."""

    url: str
    device_manager_url: str | None
    device_connector_url: str | None
    mqtt_port: int | None
    ca_file: str | None

    def user(self) -> UserClient:
        return UserClient(
            self.url,
            device_manager_url=self.device_manager_url,
            device_connector_url=self.device_connector_url,
            mqtt_port=self.mqtt_port,
            ca_file=self.ca_file,
        )

    def device(self, uid: str, secret: str) -> DeviceClient:
        return DeviceClient(
            self.device_manager_url or self.url,
            uid,
            secret,
            device_connector_url=self.device_connector_url or self.url,
            mqtt_port=self.mqtt_port,
            ca_file=self.ca_file,
        )


def _step(number: int, text: str) -> None:
    print(f"[{number}] {text}", flush=True)


def demo(args: argparse.Namespace) -> None:
    password = args.admin_password or os.environ.get("HANDSHAKE_ADMIN_PASSWORD")
    if not password:
        fail(
            "demo needs an admin or manufacturer to provision a device: pass --admin-password or set HANDSHAKE_ADMIN_PASSWORD"
        )
    if args.ca_file and not os.path.isfile(args.ca_file):
        fail(f"--ca-file {args.ca_file} is not a file")
    target = Target(args.url, args.device_manager_url, args.device_connector_url, args.mqtt_port, args.ca_file)
    try:
        _run(target, args.admin, password, args.admin_totp_secret)
    except httpx.HTTPError as exc:
        url = exc.request.url if isinstance(exc, httpx.RequestError) else httpx.URL(args.url)
        where = f"{url.scheme}://{url.netloc.decode()}"
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            fail(f"{where} has a certificate that is not trusted here: pass --ca-file with the CA that signed it")
        fail(f"cannot reach {where}: {exc}; start it with `handshake serve`")
    except HandshakeClientError as exc:
        separate = args.device_manager_url is None or args.device_connector_url is None
        hint = " (separate services? pass --device-manager-url and --device-connector-url)" if separate else ""
        if isinstance(exc.body, dict) and exc.body.get("error") in ("mfa_required", "mfa_enrolment_required"):
            fail(
                f"the server said {exc}: {args.admin} signs in with a second factor (pass --admin-totp-secret) or"
                " must enrol one first (`handshake mfa enrol`); or pass --admin with a manufacturer account"
            )
        fail(f"the server said {exc}{hint if exc.status == 404 else ''}")
    except MqttListenerUnknownError as exc:
        fail(f"{exc} (demo: --mqtt-port)")
    except ssl.SSLCertVerificationError as exc:
        fail(f"the MQTT broker's certificate is not trusted here ({exc.verify_message}): pass --ca-file")
    except TimeoutError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot reach the MQTT broker: {exc.strerror or exc}")


def _run(target: Target, admin_name: str, admin_password: str, totp_secret: str | None) -> None:
    admin = target.user()
    code = (lambda: pyotp.TOTP(totp_secret.replace(" ", "").upper()).now()) if totp_secret else None
    admin.login(admin_name, admin_password, code=code)
    _step(1, f"logged in as {admin_name}")
    device_info = admin.provision("demo-plug", name="Demo plug")[0]
    _step(2, f"provisioned device {device_info['uid']} (claim code {device_info['claim_code']})")

    user = target.user()
    username, user_password = f"demo-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    user.register(username, user_password)
    user.login(username, user_password)
    _step(3, f"registered and logged in {username}")
    user.bind(device_info["uid"], device_info["claim_code"])
    _step(4, f"{username} bound {device_info['uid']} with its claim code")

    device = target.device(device_info["uid"], device_info["secret"])
    switched = threading.Event()

    @device.command("switch")
    def switch(params: dict[str, Any]) -> dict[str, Any]:
        device.report_state({"on": bool(params.get("on"))})
        switched.set()
        return {"on": bool(params.get("on"))}

    with device:
        over = "MQTT over TLS" if device.tls else "MQTT"
        _step(5, f"simulated device connected over {over} on port {device.mqtt_port} with a device token")
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
    cmd.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the server, or with separate services the account manager"
    )
    cmd.add_argument("--device-manager-url", help="with separate services: the device manager (default: --url)")
    cmd.add_argument("--device-connector-url", help="with separate services: the device connector (default: --url)")
    cmd.add_argument("--mqtt-port", type=int, default=None, help="default: the port the server says it listens on")
    cmd.add_argument("--ca-file", help="the CA that signed the server's certificate (default: the system's CAs)")
    cmd.add_argument("--admin", default="admin", help="an admin or manufacturer account")
    cmd.add_argument("--admin-password", help="default: HANDSHAKE_ADMIN_PASSWORD")
    cmd.add_argument(
        "--admin-totp-secret",
        help="the TOTP secret of that account's second factor, if it has one (a code is made from it)",
    )
    cmd.set_defaults(handler=demo)
