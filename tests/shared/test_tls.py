"""TLS as an operator turns it on (SPEC §10: TLS_CERT and TLS_KEY mean HTTPS, and MQTT over TLS): a real
`handshake serve` with a certificate from a CA made in the test, the SDKs trusting that CA, a client
trusting another CA (or checking another host name) refused, and no plaintext MQTT beside TLS unless
the operator asks for it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_connector.client import DeviceClient, UserClient, mqtt_port_of
from shared.settings import Settings
from shared.testing import free_port
from tests.conftest import Backend, _reset_postgres
from tests.device_connector.helpers import connect_packet
from tests.shared.test_cli import HANDSHAKE, START_TIMEOUT, assert_one_line_failure, cli, make_env
from tests.tls import Pki, make_pki

ADMIN_PASSWORD = "tls admin password 42"


@dataclass
class TlsServer:
    proc: subprocess.Popen[bytes]
    workdir: Path
    http_port: int
    tls_port: int
    plain_port: int | None
    pki: Pki
    out: Path

    @property
    def url(self) -> str:
        # The certificate names `localhost` only: a client that checks host names must use it.
        return f"https://localhost:{self.http_port}"

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")


def _env(workdir: Path, backend: Backend, pki: Pki, **more: str) -> dict[str, str]:
    database = {"HANDSHAKE_DATABASE_URL": backend.database_url} if backend.database_url else {}
    redis = {"HANDSHAKE_REDIS_URL": backend.redis_url} if backend.redis_url else {}
    return make_env(
        workdir,
        **database,
        **redis,
        HANDSHAKE_REDIS_PREFIX=f"hs-tls-{secrets.token_hex(4)}:",
        HANDSHAKE_TLS_CERT=str(pki.cert),
        HANDSHAKE_TLS_KEY=str(pki.key),
        HANDSHAKE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        **more,
    )


def _start(workdir: Path, env: dict[str, str], pki: Pki, *, plaintext: bool) -> TlsServer:
    http_port, tls_port = free_port(), free_port()
    plain_port = free_port() if plaintext else None
    args = ["serve", "--http-port", str(http_port), "--mqtt-tls-port", str(tls_port)]
    if plain_port is not None:
        args += ["--mqtt-plaintext", "--mqtt-port", str(plain_port)]
    out = workdir / "serve.out"
    with out.open("wb") as stdout, (workdir / "serve.err").open("wb") as stderr:
        proc = subprocess.Popen([*HANDSHAKE, *args], cwd=workdir, env=env, stdout=stdout, stderr=stderr)
    server = TlsServer(proc, workdir, http_port, tls_port, plain_port, pki, out)
    context = ssl.create_default_context(cafile=pki.ca)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {(workdir / 'serve.err').read_text()}"
        try:
            if httpx.get(f"{server.url}/readyz", verify=context, timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (workdir / "serve.err").read_text()
        time.sleep(0.2)


def _stop(server: TlsServer) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module")
def deployment(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsServer, Pki]]:
    """One TLS deployment on the backend under test (TLS only, as it starts by default), and a CA
    that did not sign its certificate."""
    workdir = tmp_path_factory.mktemp("tls")
    if backend.database_url:  # a database of the suite's: emptied, so `admin` is created afresh
        asyncio.run(_reset_postgres(Settings(database_url=backend.database_url, keys_dir=workdir / "keys")))
    pki = make_pki(workdir / "pki", hosts=("localhost",))
    stranger = make_pki(workdir / "stranger", hosts=("localhost",), label="stranger")
    server = _start(workdir, _env(workdir, backend, pki), pki, plaintext=False)
    try:
        yield server, stranger
    finally:
        _stop(server)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on, from /proc: its socket inodes, matched in the kernel's
    tables of listening sockets (state 0A)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _provisioned(server: TlsServer) -> tuple[UserClient, dict[str, str]]:
    """A user who owns a fresh device, through the app SDK over HTTPS."""
    admin = UserClient(server.url, ca_file=server.pki.ca)
    admin.login("admin", ADMIN_PASSWORD)
    made = admin.provision("tls-plug")[0]
    admin.close()
    user = UserClient(server.url, ca_file=server.pki.ca)
    name = f"tls{secrets.token_hex(4)}"
    user.register(name, "correct horse battery")
    user.login(name, "correct horse battery")
    user.bind(made["uid"], made["claim_code"])
    return user, made


def test_https_and_mqtt_over_tls_work_with_both_sdks(deployment: tuple[TlsServer, Pki]) -> None:
    server, _ = deployment
    user, made = _provisioned(server)
    device = DeviceClient(server.url, made["uid"], made["secret"], ca_file=server.pki.ca)

    @device.command("switch")
    def switch(params: dict[str, object]) -> dict[str, object]:
        device.report_state({"on": params.get("on")})
        return {"on": params.get("on")}

    seen: list[object] = []
    heard = threading.Event()

    def hear(state: dict[str, Any]) -> None:
        seen.append(state)
        heard.set()

    try:
        with device:
            assert device.tls and device.mqtt_port == server.tls_port  # asked of the server, over HTTPS
            user.watch_state(made["uid"], hear)  # MQTT over TLS
            assert user.tls and user.mqtt_port == server.tls_port
            reply = user.send_command(made["uid"], "switch", {"on": True})
            assert reply["status"] == "ok" and reply["result"] == {"on": True}, reply
            assert heard.wait(5), "the app heard no state over MQTT over TLS"
            assert seen[-1] == {"on": True}
            assert user.device(made["uid"])["online"] is True
    finally:
        user.close()


def test_a_client_that_trusts_another_ca_is_refused(deployment: tuple[TlsServer, Pki]) -> None:
    server, stranger = deployment
    with UserClient(server.url, ca_file=stranger.ca) as app, pytest.raises(httpx.ConnectError, match="CERTIFICATE"):
        app.login("admin", ADMIN_PASSWORD)
    untrusting = ssl.create_default_context(cafile=stranger.ca)
    with (
        socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusting.wrap_socket(raw, server_hostname="localhost")


def test_the_sdk_checks_the_host_name_by_default(deployment: tuple[TlsServer, Pki]) -> None:
    """The certificate names `localhost`; the same server reached as 127.0.0.1 is refused, unless the
    caller turns the check off."""
    server, _ = deployment
    by_address = server.url.replace("localhost", "127.0.0.1")
    with UserClient(by_address, ca_file=server.pki.ca) as app, pytest.raises(httpx.ConnectError):
        app.login("admin", ADMIN_PASSWORD)
    user, made = _provisioned(server)
    user.close()
    device = DeviceClient(server.url, made["uid"], made["secret"], ca_file=server.pki.ca, mqtt_host="127.0.0.1")
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"127\.0\.0\.1"):
            device.start(timeout=5)
    finally:
        device.stop()
    lenient = DeviceClient(
        server.url, made["uid"], made["secret"], ca_file=server.pki.ca, mqtt_host="127.0.0.1", check_hostname=False
    )
    with lenient:
        assert lenient.connected.is_set()


def test_tls_serves_no_plaintext_mqtt_by_default(deployment: tuple[TlsServer, Pki]) -> None:
    server, _ = deployment
    assert listening_ports(server.proc.pid) == {server.http_port, server.tls_port}
    context = ssl.create_default_context(cafile=server.pki.ca)
    ready = httpx.get(f"{server.url}/readyz", verify=context).json()
    assert ready["mqtt"] == {"tls_port": server.tls_port}, ready
    discovery = httpx.get(f"{server.url}/.well-known/openid-configuration", verify=context).json()
    assert discovery["mqtt_tls_port"] == server.tls_port and "mqtt_port" not in discovery, discovery
    banner = [line for line in server.stdout().splitlines() if line.startswith("MQTT")]
    assert banner == [
        f"MQTT broker over TLS on 127.0.0.1:{server.tls_port} (no plaintext MQTT: --mqtt-plaintext adds it)"
    ]
    # An SDK that asks for plaintext MQTT is told there is none.
    with httpx.Client(base_url=server.url, verify=context) as http, pytest.raises(LookupError, match="TLS only"):
        mqtt_port_of(http, tls=False)
    # The TLS port answers a CONNECT in clear text with no CONNACK (0x20), only a closed connection.
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw:
        raw.sendall(connect_packet(b"plain"))
        answer = raw.recv(64)
    assert not answer.startswith(b"\x20"), answer


def test_plaintext_beside_tls_only_when_asked(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", hosts=("localhost",))
    server = _start(tmp_path, _env(tmp_path, Backend("sqlite"), pki), pki, plaintext=True)
    try:
        assert server.plain_port is not None
        assert listening_ports(server.proc.pid) == {server.http_port, server.tls_port, server.plain_port}
        ready = httpx.get(f"{server.url}/readyz", verify=ssl.create_default_context(cafile=pki.ca)).json()
        assert ready["mqtt"] == {"port": server.plain_port, "tls_port": server.tls_port}, ready
        banner = [line for line in server.stdout().splitlines() if line.startswith("MQTT")]
        assert banner == [f"MQTT broker on 127.0.0.1:{server.plain_port}, and over TLS on 127.0.0.1:{server.tls_port}"]
        user, made = _provisioned(server)
        user.close()
        with DeviceClient(server.url, made["uid"], made["secret"], ca_file=pki.ca, tls=False) as device:
            assert not device.tls and device.mqtt_port == server.plain_port
    finally:
        _stop(server)


def test_tls_ports_and_files_that_cannot_work_are_one_line(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", label="other")
    tls = {"HANDSHAKE_TLS_CERT": str(pki.cert), "HANDSHAKE_TLS_KEY": str(pki.key)}
    env = make_env(tmp_path, **tls)
    plain = make_env(tmp_path)
    http = ("serve", "--http-port", str(free_port()))
    assert_one_line_failure(cli(tmp_path, env, *http, "--mqtt-tls-port", "80100"), "80100", "port")
    assert_one_line_failure(
        cli(tmp_path, make_env(tmp_path, HANDSHAKE_MQTT_TLS_PORT="99999", **tls), *http), "HANDSHAKE_MQTT_TLS_PORT"
    )
    assert_one_line_failure(
        cli(tmp_path, plain, *http, "--mqtt-tls-port", str(free_port())), "--mqtt-tls-port", "HANDSHAKE_TLS_CERT"
    )
    assert_one_line_failure(
        cli(tmp_path, env, *http, "--mqtt-port", str(free_port())), "--mqtt-port", "--mqtt-plaintext"
    )
    same = str(free_port())
    both = (*http, "--mqtt-plaintext", "--mqtt-port", same, "--mqtt-tls-port", same)
    assert_one_line_failure(cli(tmp_path, env, *both), same, "share")
    mismatched = make_env(tmp_path, HANDSHAKE_TLS_CERT=str(pki.cert), HANDSHAKE_TLS_KEY=str(other.key))
    assert_one_line_failure(cli(tmp_path, mismatched, *http), "HANDSHAKE_TLS_CERT", "cannot be used")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_failure(cli(tmp_path, env, *http, "--mqtt-tls-port", port), port, "--mqtt-tls-port")


def test_settings_refuse_one_port_for_plain_mqtt_and_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(ValueError, match="must differ"):
        Settings(tls_cert=pki.cert, tls_key=pki.key, mqtt_plaintext=True, mqtt_port=2883, mqtt_tls_port=2883)
    # Without plaintext MQTT there is nothing to collide with.
    assert not Settings(tls_cert=pki.cert, tls_key=pki.key, mqtt_port=2883, mqtt_tls_port=2883).mqtt_plain
