"""The `handshake` command line as an operator meets it (SPEC §9, §10, §11, and §3 on key rotation and
revocation): real processes, each in its own directory with its own SQLite database and key directory,
talked to over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

from shared.testing import free_port

_SCRIPT = Path(sys.executable).with_name("handshake")
HANDSHAKE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "shared.cli"]

# Seconds for `serve` to answer /healthz. Start-up time is not what is tested here, and several servers
# start at once on what may be a busy CI machine.
START_TIMEOUT = 30.0
CLI_TIMEOUT = 90.0
PROPAGATION = 5.0  # SPEC §3: rotate and revoke reach a running server within 5 s
STRONG_PASSWORD = "violet-Anchor-47-quietly-Drums"
PASSWORD_LINE = re.compile(r"password: (\S+)")


# --- helpers -----------------------------------------------------------------------------------


def make_env(workdir: Path, **settings: str) -> dict[str, str]:
    """A clean environment for one deployment: nothing HANDSHAKE_* leaks in from the test runner."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("HANDSHAKE_")}
    env.update(
        HANDSHAKE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'h.db'}",
        HANDSHAKE_KEYS_DIR=str(workdir / "keys"),
        # Cheap argon2id: same algorithm and code path, far fewer CPU-seconds per login.
        HANDSHAKE_ARGON2_TIME_COST="1",
        HANDSHAKE_ARGON2_MEMORY_KIB="1024",
        # The admin of these deployments signs in with the password alone (as in tests/conftest.py);
        # tests/device_connector/test_demo.py and the README tour run the default.
        HANDSHAKE_MFA_REQUIRED_ROLES="[]",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


class Pending:
    """A command started in the background; its result is collected on first use."""

    def __init__(self, proc: subprocess.Popen[str], args: list[str], timeout: float = CLI_TIMEOUT) -> None:
        self.proc = proc
        self.args = args
        self.deadline = time.monotonic() + timeout
        self._result: subprocess.CompletedProcess[str] | None = None

    def result(self) -> subprocess.CompletedProcess[str]:
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=max(0.1, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                pytest.fail(f"{self.args} did not finish in time\n{out}\n{err}")
            self._result = subprocess.CompletedProcess(self.args, self.proc.returncode, out, err)
        return self._result

    def close(self) -> None:
        if self._result is None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.communicate()


def launch(workdir: Path, env: dict[str, str], *args: str) -> Pending:
    command = [*HANDSHAKE, *args]
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Pending(proc, command)


def cli(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return launch(workdir, env, *args).result()


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *mentions: str) -> str:
    """SPEC §9: one clear line saying what and how to fix it, exit code 2, no traceback."""
    shown = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("handshake:"), shown
    for mention in mentions:
        assert mention.lower() in lines[0].lower(), shown
    return lines[0]


def http(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=10, trust_env=False)


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post("/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def me(client: httpx.Client, token: str) -> httpx.Response:
    return client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})


def jwks_kids(client: httpx.Client) -> set[str]:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    return {key["kid"] for key in response.json()["keys"]}


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def new_kid(output: str) -> str:
    match = re.search(r"new signing key (\S+)", output)
    assert match, output
    return match.group(1)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    workdir: Path
    env: dict[str, str]
    port: int
    out: Path
    err: Path
    ready_by: float
    killed: bool = False

    def wait_ready(self) -> None:
        with http(self.base_url) as client:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(
                        f"`handshake serve` in {self.workdir} exited with {self.proc.returncode}\n{self.tail()}"
                    )
                try:
                    if client.get("/healthz", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > self.ready_by:
                    pytest.fail(
                        f"`handshake serve` in {self.workdir} gave no /healthz in {START_TIMEOUT} s\n{self.tail()}"
                    )
                time.sleep(0.2)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def tail(self) -> str:
        return f"stdout: {self.stdout()[-2000:]}\nstderr: {self.stderr()[-3000:]}"

    def stop(self) -> int:
        """SIGTERM, as an init system stops it; SIGKILL only if it has not gone 15 s later."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def launch_server(workdir: Path, env: dict[str, str], name: str = "serve", *extra: str) -> Server:
    port = free_port()
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*HANDSHAKE, "serve", "--http-port", str(port), "--mqtt-port", str(free_port()), *extra],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    return Server(proc, workdir, env, port, out, err, time.monotonic() + START_TIMEOUT)


def start_server(workdir: Path, env: dict[str, str], name: str = "serve", *extra: str) -> Server:
    server = launch_server(workdir, env, name, *extra)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def admin_password(server: Server) -> str:
    found = PASSWORD_LINE.findall(server.stdout())
    assert len(found) == 1, server.stdout()
    password: str = found[0]
    return password


# --- everything that can start at once, starts at once ----------------------------------------
#
# Each `handshake` process spends a second or more importing before it does anything, so the servers
# start together, the one-shot commands that do not depend on each other start together, and each
# test then checks its own result.

BAD_SETTINGS = [("HANDSHAKE_JWT_ALG", "XX"), ("HANDSHAKE_ACCESS_TTL", "abc"), ("HANDSHAKE_DATABASE_URL", "mysql://x")]
UNREACHABLE = [
    ("HANDSHAKE_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:{port}/x", "database"),
    ("HANDSHAKE_REDIS_URL", "redis://127.0.0.1:{port}", "redis"),
]
OTHER_ALGS = ["EdDSA", "RS256"]


@dataclass
class Workdir:
    path: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def one_shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Workdir, Pending]]]:
    started: dict[str, tuple[Workdir, Pending]] = {}

    def workdir(name: str, **settings: str) -> Workdir:
        path = tmp_path_factory.mktemp(name)
        return Workdir(path, make_env(path, **settings))

    def start(name: str, *args: str, **settings: str) -> None:
        prepared = workdir(name, **settings)
        started[name] = (prepared, launch(prepared.path, prepared.env, *args))

    def serve_args() -> tuple[str, ...]:
        return ("serve", "--http-port", str(free_port()), "--mqtt-port", str(free_port()))

    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start("taken-port", "serve", "--http-port", str(port), "--mqtt-port", str(free_port()))
        for name, value in BAD_SETTINGS:
            start(f"bad-{name}", *serve_args(), **{name: value})
        for name, url, _ in UNREACHABLE:
            start(f"unreachable-{name}", *serve_args(), **{name: url.format(port=free_port())})
        start("bad-role", "users", "create", "dave", "--role", "wizard")
        start("hs256-keys", "keys", "rotate", HANDSHAKE_JWT_ALG="HS256", HANDSHAKE_SECRET="s" * 40)
        start("migrate", "migrate")
        start("keys", "keys", "rotate")
        # `migrate`, not `serve`: should the file be ignored, the command still ends.
        start("weak-admin-password", *serve_args(), HANDSHAKE_ADMIN_PASSWORD="password")
        start("missing-config", "migrate", HANDSHAKE_CONFIG="no-such-handshake.toml")

        # A key directory the process cannot use, and a damaged key file in a usable one.
        unusable = workdir("keys-dir-is-a-file")
        Path(unusable.env["HANDSHAKE_KEYS_DIR"]).write_text("not a directory")
        started["keys-dir-is-a-file"] = (unusable, launch(unusable.path, unusable.env, *serve_args()))
        damaged = workdir("damaged-key-file")
        keys_dir = Path(damaged.env["HANDSHAKE_KEYS_DIR"])
        keys_dir.mkdir(mode=0o700)
        (keys_dir / "broken.key.json").write_text('{"kid": "broken"')
        started["damaged-key-file"] = (damaged, launch(damaged.path, damaged.env, "keys", "list"))
        yield started
    finally:
        for _, pending in started.values():
            pending.close()
        taken.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """The ES256 deployment most tests share, started on an empty database with a generated admin
    password, and one deployment per other algorithm, started with HANDSHAKE_ADMIN_PASSWORD."""
    plans: dict[str, dict[str, str]] = {
        "main": {},
        **{alg: {"HANDSHAKE_JWT_ALG": alg, "HANDSHAKE_ADMIN_PASSWORD": STRONG_PASSWORD} for alg in OTHER_ALGS},
    }
    running: dict[str, Server] = {}
    try:
        for name, settings in plans.items():
            path = tmp_path_factory.mktemp(f"serve-{name}")
            running[name] = launch_server(path, make_env(path, **settings))
        for server in running.values():
            server.wait_ready()
        yield running
    finally:
        for server in running.values():
            server.stop()


@pytest.fixture(scope="module")
def server(servers: dict[str, Server]) -> Server:
    """The deployment most tests share: ES256, started on an empty database."""
    return servers["main"]


# --- serve -------------------------------------------------------------------------------------


def test_first_serve_creates_admin_and_prints_its_password_once(server: Server) -> None:
    password = admin_password(server)  # exactly one "password: X" line
    assert server.stdout().count(password) == 1, server.stdout()
    assert password not in server.stderr()  # not in the logs either
    with http(server.base_url) as client:
        token = login(client, "admin", password)
        response = me(client, token)
        assert response.status_code == 200, response.text
        assert response.json()["username"] == "admin"
        assert response.json()["role"] == "admin"


def test_first_serve_creates_the_key_directory_private(server: Server) -> None:
    keys_dir = server.workdir / "keys"
    assert keys_dir.is_dir()
    assert keys_dir.stat().st_mode & 0o777 == 0o700
    files = list(keys_dir.glob("*.key.json"))
    assert files
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_second_serve_on_the_same_database_prints_no_password_and_stops_on_sigterm(server: Server) -> None:
    password = admin_password(server)
    # Another account manager beside the running deployment (a second MQTT broker is refused: below).
    second = start_server(server.workdir, server.env, "second", "--service", "account-manager")
    try:
        with http(second.base_url) as client:
            assert me(client, login(client, "admin", password)).status_code == 200
    finally:
        code = second.stop()  # SIGTERM
    assert not PASSWORD_LINE.search(second.stdout()), second.stdout()
    assert password not in second.stdout() + second.stderr()
    assert not second.killed, f"`handshake serve` ignored SIGTERM for 15 s\n{second.tail()}"
    assert code in (0, -signal.SIGTERM), f"exit {code} on SIGTERM\n{second.tail()}"
    assert "Traceback" not in second.stdout() + second.stderr(), second.tail()


def test_a_second_broker_on_the_same_deployment_is_refused_in_one_line(server: Server) -> None:
    """It used to start and record the first one's connected devices offline."""
    second = launch_server(server.workdir, server.env, "second-broker")
    try:
        code = second.proc.wait(timeout=CLI_TIMEOUT)
    finally:
        second.stop()
    result = subprocess.CompletedProcess(second.proc.args, code, second.stdout(), second.stderr())
    assert_one_line_failure(result, "another `handshake serve`", str(server.proc.pid))
    with http(server.base_url) as client:
        assert client.get("/healthz").status_code == 200  # the first one goes on


PYTHON_STARTING = "init_import_site"  # how Python's own start-up reports a Ctrl-C during it


def test_ctrl_c_is_a_clean_stop_not_a_traceback(tmp_path: Path) -> None:
    """SIGINT while loading and while serving: the server stops, at most one line (exit 130), never a
    traceback. (Every other moment of start-up: tests/shared/test_interrupted_start.py.)"""
    env = make_env(tmp_path)
    # While the modules load (past the interpreter's own start, whose Ctrl-C traceback is Python's,
    # before any code of ours runs: on a loaded machine that start alone takes over 50 ms); once ready.
    for moment in (0.3, None):
        for attempt in range(4):
            server = launch_server(tmp_path, env, name=f"interrupted-{moment}-{attempt}")
            if moment is None:
                server.wait_ready()
            else:
                time.sleep(moment * 2**attempt)
            server.proc.send_signal(signal.SIGINT)
            code = server.proc.wait(timeout=30)
            if PYTHON_STARTING not in server.stderr():
                break
            # Still the interpreter's own start (its site module), before any code of ours: later.
        shown = f"exit {code} after SIGINT\n{server.tail()}"
        assert "Traceback" not in server.stdout() + server.stderr(), shown
        assert "KeyboardInterrupt" not in server.stderr(), shown
        assert code in (0, 130), shown
        if code == 130:
            assert server.stderr().rstrip().splitlines()[-1] == "handshake: interrupted", shown


def test_admin_password_from_the_environment_is_used_and_not_printed(servers: dict[str, Server]) -> None:
    running = servers["EdDSA"]  # started on an empty database with HANDSHAKE_ADMIN_PASSWORD
    assert STRONG_PASSWORD not in running.stdout() + running.stderr()
    assert not PASSWORD_LINE.search(running.stdout()), running.stdout()
    with http(running.base_url) as client:
        response = me(client, login(client, "admin", STRONG_PASSWORD))
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "admin"


def test_taken_port_is_one_line_and_exit_2(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    _, pending = one_shots["taken-port"]
    port = pending.args[pending.args.index("--http-port") + 1]
    line = assert_one_line_failure(pending.result(), str(port))
    assert "--http-port" in line, line


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_setting_is_one_line_naming_it(
    one_shots: dict[str, tuple[Workdir, Pending]], name: str, value: str
) -> None:
    _, pending = one_shots[f"bad-{name}"]
    assert_one_line_failure(pending.result(), name)


@pytest.mark.parametrize(("name", "url", "mentions"), UNREACHABLE)
def test_unreachable_backend_is_one_line(
    one_shots: dict[str, tuple[Workdir, Pending]], name: str, url: str, mentions: str
) -> None:
    _, pending = one_shots[f"unreachable-{name}"]
    assert_one_line_failure(pending.result(), mentions, name)


def test_missing_config_file_is_one_line(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    """HANDSHAKE_CONFIG naming a file that is not there is a bad setting, not a silent fallback to the
    defaults (another database, another key directory)."""
    _, pending = one_shots["missing-config"]
    assert_one_line_failure(pending.result(), "HANDSHAKE_CONFIG")


def test_refused_admin_password_is_one_line_naming_the_setting(
    one_shots: dict[str, tuple[Workdir, Pending]],
) -> None:
    _, pending = one_shots["weak-admin-password"]
    assert_one_line_failure(pending.result(), "HANDSHAKE_ADMIN_PASSWORD")


def test_unusable_key_directory_is_one_line(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    _, pending = one_shots["keys-dir-is-a-file"]
    assert_one_line_failure(pending.result(), "key")


def test_damaged_key_file_is_one_line(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    _, pending = one_shots["damaged-key-file"]
    assert_one_line_failure(pending.result(), "broken.key.json")


# --- migrate, users ----------------------------------------------------------------------------


def test_migrate_is_idempotent(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    workdir, pending = one_shots["migrate"]
    for result in (pending.result(), cli(workdir.path, workdir.env, "migrate")):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


def test_users_create_prints_a_password_that_logs_in(server: Server) -> None:
    result = cli(server.workdir, server.env, "users", "create", "carol", "--role", "support")
    assert result.returncode == 0, result.stderr
    found = PASSWORD_LINE.findall(result.stdout)
    assert len(found) == 1, result.stdout
    assert result.stdout.count(found[0]) == 1, result.stdout
    with http(server.base_url) as client:
        response = me(client, login(client, "carol", found[0]))
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "carol"
    assert response.json()["role"] == "support"

    again = cli(server.workdir, server.env, "users", "create", "carol", "--role", "support")
    assert_one_line_failure(again, "taken")
    assert not PASSWORD_LINE.search(again.stdout), again.stdout


def test_users_create_refuses_an_unknown_role(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    _, pending = one_shots["bad-role"]
    result = pending.result()
    assert_one_line_failure(result, "--role")
    assert not PASSWORD_LINE.search(result.stdout), result.stdout


# --- keys --------------------------------------------------------------------------------------


def _listed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """`keys list` as {kid: "signing" or "verify-only"}."""
    assert result.returncode == 0, result.stderr
    states = {}
    for line in result.stdout.splitlines():
        kid, _alg, state, *_ = line.split()
        states[kid] = state
    return states


def test_keys_rotate_list_and_revoke(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    workdir, pending = one_shots["keys"]
    path, env = workdir.path, workdir.env
    first = pending.result()
    assert first.returncode == 0, first.stderr
    k1 = new_kid(first.stdout)
    keys_dir = path / "keys"
    assert keys_dir.stat().st_mode & 0o777 == 0o700
    second = cli(path, env, "keys", "rotate")
    assert second.returncode == 0, second.stderr
    k2 = new_kid(second.stdout)
    assert k2 != k1
    for key_file in keys_dir.glob("*.key.json"):
        assert key_file.stat().st_mode & 0o777 == 0o600, key_file

    listing, unknown = launch(path, env, "keys", "list"), launch(path, env, "keys", "revoke", "no-such-kid")
    assert _listed(listing.result()) == {k1: "verify-only", k2: "signing"}
    assert_one_line_failure(unknown.result(), "no-such-kid")

    revoked = cli(path, env, "keys", "revoke", k1)
    assert revoked.returncode == 0, revoked.stderr
    assert _listed(cli(path, env, "keys", "list")) == {k2: "signing"}


def test_a_kid_is_never_taken_for_an_option(tmp_path: Path) -> None:
    """One thumbprint in 64 begins with `-`: new kids never do, and a key made before that (its kid
    on disk) is revoked with or without `--` in front of it."""
    from shared.keys import Key, KeyDirectory, generate_private_key, thumbprint_kid

    kids = [thumbprint_kid(generate_private_key("ES256").public_key()) for _ in range(1500)]
    assert not [kid for kid in kids if kid.startswith("-")]
    assert len(set(kids)) == len(kids) and {len(kid) for kid in kids} == {22}

    env = make_env(tmp_path)
    directory = KeyDirectory(tmp_path / "keys")
    directory.ensure("ES256")
    dashed = []
    for n in range(2):
        private = generate_private_key("ES256")
        key = Key(
            f"-c-veY_2B96xNc11s20p{n}F", "ES256", int(time.time()) - 10, int(time.time()), private, private.public_key()
        )
        directory._write(key)
        dashed.append(key.kid)
    plain = cli(tmp_path, env, "keys", "revoke", dashed[0])
    assert plain.returncode == 0, plain.stderr
    separated = cli(tmp_path, env, "keys", "revoke", "--", dashed[1])
    assert separated.returncode == 0, separated.stderr
    assert not set(dashed) & set(_listed(cli(tmp_path, env, "keys", "list")))
    assert_one_line_failure(cli(tmp_path, env, "keys", "list", "--bogus"), "--bogus")  # still refused


def test_a_mistake_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    """SPEC §9: one line and exit code 2, never a usage dump or a traceback."""
    env = make_env(tmp_path)
    assert_one_line_failure(cli(tmp_path, env, "serve", "--http-port", "80100"), "80100", "port")
    assert_one_line_failure(cli(tmp_path, env, "serve", "--mqtt-port", "http"), "'http'", "port")
    assert_one_line_failure(cli(tmp_path, env, "keys", "list", "extra"), "keys list takes no KID")
    assert_one_line_failure(cli(tmp_path, env, "keys", "rotate", "extra"), "keys rotate takes no KID")
    assert_one_line_failure(cli(tmp_path, env, "nonsense"), "nonsense")
    assert_one_line_failure(cli(tmp_path, env), "required")


def test_bad_settings_are_one_line_that_names_them(tmp_path: Path) -> None:
    redis = make_env(tmp_path, HANDSHAKE_REDIS_URL="notaurl")
    assert_one_line_failure(cli(tmp_path, redis, "migrate"), "HANDSHAKE_REDIS_URL", "notaurl")
    missing = make_env(
        tmp_path, HANDSHAKE_TLS_CERT=str(tmp_path / "no.pem"), HANDSHAKE_TLS_KEY=str(tmp_path / "no.key")
    )
    line = assert_one_line_failure(cli(tmp_path, missing, "serve"), "HANDSHAKE_TLS_CERT", "no.pem")
    assert "Value error" not in line and "settings:" not in line, line
    half = make_env(tmp_path, HANDSHAKE_TLS_CERT=str(tmp_path / "no.pem"))
    line = assert_one_line_failure(cli(tmp_path, half, "serve"), "HANDSHAKE_TLS_KEY")
    assert "Value error" not in line and "settings:" not in line, line


def test_settings_that_name_what_is_not_there_are_one_line(tmp_path: Path) -> None:
    geoip = make_env(tmp_path, HANDSHAKE_GEOIP_DB=str(tmp_path / "GeoLite2-City.mmdb"))
    assert_one_line_failure(cli(tmp_path, geoip, "migrate"), "HANDSHAKE_GEOIP_DB", "GeoLite2-City.mmdb")
    nowhere = make_env(tmp_path, HANDSHAKE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/h.db")
    assert_one_line_failure(cli(tmp_path, nowhere, "migrate"), "HANDSHAKE_DATABASE_URL", "does not exist")
    assert not (tmp_path / "no").exists(), "the missing directories were created"


def test_a_misspelled_setting_is_a_warning_naming_the_real_one(tmp_path: Path) -> None:
    config = tmp_path / "handshake.toml"
    config.write_text("acess_ttl = 600\n")
    env = make_env(tmp_path, HANDSHAKE_DATABSE_URL="sqlite+aiosqlite:///elsewhere.db", HANDSHAKE_CONFIG=str(config))
    result = cli(tmp_path, env, "migrate")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any("HANDSHAKE_DATABSE_URL" in line and "HANDSHAKE_DATABASE_URL" in line for line in lines), lines
    assert any("'acess_ttl'" in line and "access_ttl" in line for line in lines), lines
    assert all(line.startswith("handshake: warning:") for line in lines if "acess" in line or "DATABSE" in line)


def test_provision_to_an_unwritable_file_provisions_nothing(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert cli(tmp_path, env, "migrate").returncode == 0
    target = tmp_path / "no-such-dir" / "devices.csv"
    result = cli(tmp_path, env, "devices", "provision", "--model", "plug", "--count", "3", "--out", str(target))
    assert_one_line_failure(result, str(target), "nothing was provisioned")
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "h.db")) as db:
        assert db.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_a_database_that_refuses_says_why(tmp_path: Path) -> None:
    """A wrong user and a missing database are not "start it": the server runs, the URL is wrong."""
    base = "postgresql+asyncpg://{user}@127.0.0.1:5432/{db}"
    for url, mentions in (
        (base.format(user="nosuchrole", db="test"), ("refused", "user", "HANDSHAKE_DATABASE_URL")),
        (base.format(user="postgres", db="nosuchdatabase"), ("refused", "does not exist", "HANDSHAKE_DATABASE_URL")),
    ):
        line = assert_one_line_failure(
            cli(tmp_path, make_env(tmp_path, HANDSHAKE_DATABASE_URL=url), "migrate"), *mentions
        )
        assert "start it" not in line, line


def test_a_banner_names_the_dashboard_only_where_it_is(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    server = start_server(tmp_path, env, "manager", "--service", "device-manager")
    try:
        banner = [line for line in server.stdout().splitlines() if line.startswith("Handshake (")]
    finally:
        server.stop()
    assert banner and "dashboard" not in banner[0] and "/docs" in banner[0], server.stdout()


def test_the_database_file_is_private_like_the_keys(tmp_path: Path) -> None:
    migrated = cli(tmp_path, make_env(tmp_path), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "h.db").stat().st_mode & 0o777 == 0o600


def test_keys_with_hs256_is_one_line(one_shots: dict[str, tuple[Workdir, Pending]]) -> None:
    workdir, pending = one_shots["hs256-keys"]
    assert_one_line_failure(pending.result(), "HS256")
    assert not list((workdir.path / "keys").glob("*.key.json"))


def test_key_changes_reach_the_live_event_stream_with_who_made_them(server: Server) -> None:
    """`keys rotate` and `keys revoke` run in a process of their own: the running server's activity
    stream (the dashboard's) shows each at once, with the operator who ran it."""
    import getpass
    import threading

    with http(server.base_url) as client:
        token = login(client, "admin", admin_password(server))
        heard: list[dict[str, Any]] = []
        opened = threading.Event()

        def follow() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=server.base_url, timeout=30, trust_env=False) as stream_client:
                with stream_client.stream("GET", "/v1/admin/events/stream", headers=headers) as stream:
                    opened.set()
                    for line in stream.iter_lines():
                        if line.startswith("data:"):
                            event = json.loads(line[5:])
                            if str(event["type"]).startswith("key_"):
                                heard.append(event)
                        if len(heard) == 2:
                            return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert opened.wait(10)
        time.sleep(0.3)
        rotated = cli(server.workdir, server.env, "keys", "rotate")
        assert rotated.returncode == 0 and not rotated.stderr, rotated.stderr
        new = new_kid(rotated.stdout)
        revoked = cli(server.workdir, server.env, "keys", "revoke", new)
        assert revoked.returncode == 0 and not revoked.stderr, revoked.stderr
        reader.join(PROPAGATION + 5)
        assert [(e["type"], e["detail"]["kid"]) for e in heard] == [("key_rotated", new), ("key_revoked", new)]
        for event in heard:
            assert event["actor_type"] == "system"
            assert str(event["detail"]["operator"]).startswith(getpass.getuser() + "@")
        listed = client.get(
            "/v1/admin/events",
            params={"type": "key_revoked"},
            headers={"Authorization": f"Bearer {login(client, 'admin', admin_password(server))}"},
        )
        assert listed.status_code == 200 and [e["detail"]["kid"] for e in listed.json()] == [new]
        # Leave the shared server settled: signing with the key made when `new` was revoked (it may sign
        # with `new` until it reloads its ring, up to a second: such tokens then fail, as revoked).
        deadline = time.monotonic() + PROPAGATION
        while kid_of(login(client, "admin", admin_password(server))) == new:
            assert time.monotonic() < deadline, "still signing with a revoked key"
            time.sleep(0.2)


def test_serve_believes_no_forwarded_header_by_default(server: Server) -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: anyone on the host could
    then pick the IP that lockout and events see. Without HANDSHAKE_TRUSTED_PROXIES nobody is believed."""
    with http(server.base_url) as client:
        token = login(client, "admin", admin_password(server))
        body = {"username": "nobody-by-that-name", "password": "wrong password entirely"}
        response = client.post("/v1/auth/login", json=body, headers={"X-Forwarded-For": "203.0.113.9"})
        assert response.status_code == 401
        events = client.get(
            "/v1/admin/events", params={"type": "login_failed"}, headers={"Authorization": f"Bearer {token}"}
        ).json()
        (event,) = [e for e in events if e["detail"].get("username") == "nobody-by-that-name"]
        assert event["ip"] == "127.0.0.1"


def test_live_rotation_and_revocation(server: Server) -> None:
    with http(server.base_url) as client:
        password = admin_password(server)
        token_a = login(client, "admin", password)
        k1 = kid_of(token_a)
        assert k1 in jwks_kids(client)

        rotated = cli(server.workdir, server.env, "keys", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        k2 = new_kid(rotated.stdout)
        assert k2 != k1

        deadline = time.monotonic() + PROPAGATION
        token_b = login(client, "admin", password)
        while kid_of(token_b) != k2 and time.monotonic() < deadline:
            time.sleep(0.2)
            token_b = login(client, "admin", password)
        assert kid_of(token_b) == k2, f"still signing with {kid_of(token_b)} {PROPAGATION} s after `keys rotate`"
        # The old key only stops signing: its tokens still work and it stays published.
        assert me(client, token_a).status_code == 200
        assert {k1, k2} <= jwks_kids(client)

        revoked = cli(server.workdir, server.env, "keys", "revoke", k1)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + PROPAGATION
        while True:
            status, kids = me(client, token_a).status_code, jwks_kids(client)
            if (status == 401 and k1 not in kids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 401, f"a token of the revoked key {k1} still gets {status} after {PROPAGATION} s"
        assert k1 not in kids, f"the revoked key {k1} is still in the JWKS after {PROPAGATION} s"
        assert k2 in kids
        response = me(client, token_b)
        assert response.status_code == 200, response.text
        assert kid_of(login(client, "admin", password)) == k2


# --- outside verifiers -------------------------------------------------------------------------


def _verify_with_joserfc(server: Server, alg: str, token: str) -> None:
    """What a third-party service does: fetch the JWKS, pick the key by kid, check the claims."""
    with http(server.base_url) as client:
        jwks = client.get("/.well-known/jwks.json")
        assert jwks.status_code == 200, jwks.text
        discovery = client.get("/.well-known/openid-configuration").json()
    for entry in jwks.json()["keys"]:
        assert entry["alg"] == alg and entry["use"] == "sig", entry
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(entry), "a private part in the JWKS"
    key_set = KeySet.import_key_set(jwks.json())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc flags "EdDSA" as superseded by RFC 9864
        decoded = jose_jwt.decode(token, key_set, algorithms=[alg])
    assert decoded.header["alg"] == alg
    assert decoded.header["kid"] == kid_of(token)
    registry = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": discovery["issuer"]},
        aud={"essential": True, "value": "handshake"},
        sub={"essential": True},
        exp={"essential": True},
    )
    registry.validate(decoded.claims)
    # The same token with one payload character changed no longer verifies.
    header, payload, signature = token.split(".")
    middle = len(payload) // 2
    altered = payload[:middle] + ("A" if payload[middle] != "A" else "B") + payload[middle + 1 :]
    with warnings.catch_warnings(), pytest.raises(JoseError):
        warnings.simplefilter("ignore", SecurityWarning)
        jose_jwt.decode(f"{header}.{altered}.{signature}", key_set, algorithms=[alg])


def test_tokens_verify_with_joserfc_from_the_jwks(server: Server) -> None:
    with http(server.base_url) as client:
        token = login(client, "admin", admin_password(server))
    _verify_with_joserfc(server, "ES256", token)


@pytest.mark.parametrize("alg", OTHER_ALGS)
def test_tokens_verify_with_joserfc_for_other_algorithms(servers: dict[str, Server], alg: str) -> None:
    running = servers[alg]
    with http(running.base_url) as client:
        token = login(client, "admin", STRONG_PASSWORD)
    assert jwt.get_unverified_header(token)["alg"] == alg
    _verify_with_joserfc(running, alg, token)
