"""A real RabbitMQ cluster for the suite: three nodes of the machine's RabbitMQ (3.10, Debian), each
with its own ports on 127.0.0.1, its own data under `root`, and the plugins the connector needs
(MQTT, HTTP auth backend, management, event exchange). Nodes b, c, ... join node a.

It never touches a system RabbitMQ: own node names (`hs-<hex>-a@localhost`), own Erlang cookie in
its own HOME, an empty RABBITMQ_CONF_ENV_FILE (the Debian one forces NODENAME=rabbit@localhost),
and the unwrapped scripts of /usr/lib/rabbitmq/bin (the /usr/sbin ones switch to the rabbitmq user).

Each node runs `rabbitmq-server` in the foreground, in a session of its own. The Popen child is
not the VM: it is the `sh` of rabbitmq-server, which starts `erl` in the background (erl execs
erlexec, which execs beam.smp), waits for it and forwards SIGTERM to it. beam.smp has a child
erl_child_setup, which spawns the port programs (inet_gethost, a `sh -s rabbit_disk_monitor`),
each in a session of its own. `stop()` sends SIGTERM to beam.smp and the sh, waits, then SIGKILLs
whatever is left of that process tree; `atexit` calls it too, should a test session forget."""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.testing import free_port

RABBITMQ_BIN = Path(os.environ.get("HANDSHAKE_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
PLUGINS = ("rabbitmq_mqtt", "rabbitmq_auth_backend_http", "rabbitmq_management", "rabbitmq_event_exchange")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class RabbitUnavailableError(Exception):
    """RabbitMQ is not installed here, or a node of the cluster failed to start."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RabbitNode:
    name: str
    amqp_port: int
    mqtt_port: int
    http_port: int
    pid: int  # of the node's beam.smp


@dataclass
class _Proc:
    name: str
    dir: Path
    log: Path  # stdout and stderr of rabbitmq-server
    amqp_port: int
    mqtt_port: int
    http_port: int
    dist_port: int
    popen: subprocess.Popen[bytes] | None = None
    beam_pid: int | None = None


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _started(pid: int) -> int | None:
    """The start time of a live (not zombie) process, None when it is gone."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # the process is gone (or going) while we look
        return found
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _tree(root: int) -> dict[int, int]:
    """A live process and its live descendants: pid -> start time."""
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        started = _started(pid)
        if started is None or pid in out:
            continue
        out[pid] = started
        todo += _children(pid)
    return out


def _signal(pid: int, started: int, sig: signal.Signals) -> None:
    if _started(pid) == started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RabbitCluster:
    def __init__(self, *, hook_base: str, secret: str, nodes: int = 3, root: Path) -> None:
        if not 1 <= nodes <= len(_LETTERS):
            raise ValueError(f"nodes must be between 1 and {len(_LETTERS)}")
        self.hook_base = hook_base.rstrip("/")
        self.secret = secret
        self.count = nodes
        self.root = root
        self.admin_user = "handshake-admin"
        self.admin_password = secrets.token_urlsafe(18)
        self.nodes: list[RabbitNode] = []
        self.started_in: float | None = None  # seconds start() took
        self._prefix = f"hs-{secrets.token_hex(4)}"
        self._home = root / "home"
        self._procs: list[_Proc] = []
        self._lock = threading.Lock()
        self._registered = False

    # --- URLs and CLI ---------------------------------------------------------------------------

    def _creds(self) -> str:
        return f"{urllib.parse.quote(self.admin_user, safe='')}:{urllib.parse.quote(self.admin_password, safe='')}"

    def amqp_url(self, i: int = 0) -> str:
        return f"amqp://{self._creds()}@127.0.0.1:{self.nodes[i].amqp_port}/"

    def mqtt_url(self, i: int = 0) -> str:
        return f"mqtt://{self._creds()}@127.0.0.1:{self.nodes[i].mqtt_port}"

    def api_url(self, i: int = 0) -> str:
        return f"http://{self._creds()}@127.0.0.1:{self.nodes[i].http_port}"

    def ctl(self, *args: str, node: int = 0, timeout: float = 60) -> str:
        """Run rabbitmqctl against a node; its stdout. Raises subprocess.CalledProcessError (with
        stdout and stderr) when it fails."""
        return self._ctl(self._procs[node].name, *args, timeout=timeout)

    def _ctl(self, nodename: str, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", nodename, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
        return done.stdout

    # --- environment and files ------------------------------------------------------------------

    def _env(self, proc: _Proc | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env |= {
            "HOME": str(self._home),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",  # should erl have to start an epmd: localhost only
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        if proc is not None:
            d = proc.dir
            env |= {
                "RABBITMQ_NODENAME": proc.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(proc.amqp_port),
                "RABBITMQ_DIST_PORT": str(proc.dist_port),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_MNESIA_DIR": str(d / "mnesia" / proc.name),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),  # never written
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
        return env

    def _config(self, proc: _Proc) -> str:
        hook = f"{self.hook_base}/v1/mqtt/rabbitmq"
        query = f"secret={urllib.parse.quote(self.secret, safe='')}"
        return "\n".join(
            [
                f"listeners.tcp.1 = 127.0.0.1:{proc.amqp_port}",
                f"mqtt.listeners.tcp.1 = 127.0.0.1:{proc.mqtt_port}",
                "management.tcp.ip = 127.0.0.1",
                f"management.tcp.port = {proc.http_port}",
                "auth_backends.1 = internal",
                "auth_backends.2 = http",
                "auth_http.http_method = post",
                f"auth_http.user_path = {hook}/user?{query}",
                f"auth_http.vhost_path = {hook}/vhost?{query}",
                f"auth_http.resource_path = {hook}/resource?{query}",
                f"auth_http.topic_path = {hook}/topic?{query}",
                "mqtt.allow_anonymous = false",
                "mqtt.vhost = /",
                "mqtt.exchange = amq.topic",
                "loopback_users = none",
                f"load_definitions = {self.root / 'definitions.json'}",
                "log.console = false",
                "log.file.level = info",
                "",
            ]
        )

    def _definitions(self) -> str:
        """The admin user, loaded at boot instead of the default guest (which is then not created)."""
        user = self.admin_user
        return json.dumps(
            {
                "users": [
                    {
                        "name": user,
                        "password_hash": _password_hash(self.admin_password),
                        "hashing_algorithm": "rabbit_password_hashing_sha256",
                        "tags": ["administrator"],
                        "limits": {},
                    }
                ],
                "vhosts": [{"name": "/"}],
                "permissions": [{"user": user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
                "topic_permissions": [
                    {"user": user, "vhost": "/", "exchange": "amq.topic", "write": ".*", "read": ".*"}
                ],
            }
        )

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._home.mkdir(exist_ok=True)
        cookie = self._home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "definitions.json").write_text(self._definitions())
        taken: set[int] = set()

        def port() -> int:
            while (p := free_port()) in taken:
                pass
            taken.add(p)
            return p

        for i in range(self.count):
            name = f"{self._prefix}-{_LETTERS[i]}@localhost"
            d = self.root / _LETTERS[i]
            proc = _Proc(name, d, d / "server.log", port(), port(), port(), port())
            for sub in ("mnesia", "log"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "rabbitmq.conf").write_text(self._config(proc))
            (d / "enabled_plugins").write_text(f"[{','.join(PLUGINS)}].\n")
            self._procs.append(proc)

    # --- start ----------------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        """Start the nodes in parallel, cluster them, wait until every port answers (within `timeout`:
        90 s once ran out beside a loaded four-worker run, each `rabbitmqctl` taking 10-40 s). Raises
        RabbitUnavailableError (after stopping whatever it started) when RabbitMQ is not installed or a
        node fails to start."""
        for tool in ("rabbitmq-server", "rabbitmqctl"):
            if not os.access(RABBITMQ_BIN / tool, os.X_OK):
                raise RabbitUnavailableError(f"RabbitMQ is not installed: no {RABBITMQ_BIN / tool}")
        if shutil.which("erl") is None:
            raise RabbitUnavailableError("Erlang is not installed: no erl on PATH")
        if self._procs:
            raise RuntimeError("RabbitCluster.start() runs once")
        began = time.monotonic()
        deadline = began + timeout
        if not self._registered:
            atexit.register(self.stop)
            self._registered = True
        try:
            self._prepare()
            for proc in self._procs:
                self._spawn(proc)
            self._await_boot(deadline)
            self._join(deadline)
            self._await_cluster(deadline)
        except RabbitUnavailableError:
            self.stop()
            raise
        except BaseException as exc:
            self.stop()
            if isinstance(exc, Exception):
                raise RabbitUnavailableError(f"RabbitMQ cluster failed to start: {exc!r}") from exc
            raise
        self.nodes = [RabbitNode(p.name, p.amqp_port, p.mqtt_port, p.http_port, p.beam_pid or 0) for p in self._procs]
        self.started_in = time.monotonic() - began

    def _spawn(self, proc: _Proc) -> None:
        with self._lock, open(proc.log, "wb") as log:
            proc.popen = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self._env(proc),
                cwd=proc.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own: stop() signals all of it
            )

    def _failure(self, proc: _Proc, what: str) -> RabbitUnavailableError:
        rabbit_log = proc.dir / "log" / f"{proc.name}.log"
        return RabbitUnavailableError(
            f"RabbitMQ node {proc.name} {what}\n--- {proc.log} ---\n{_tail(proc.log)}"
            f"\n--- {rabbit_log} ---\n{_tail(rabbit_log)}"
        )

    def _find_beam(self, proc: _Proc) -> int | None:
        assert proc.popen is not None
        if _comm(proc.popen.pid).startswith("beam"):
            return proc.popen.pid
        for pid in _tree(proc.popen.pid):
            if _comm(pid).startswith("beam"):
                return pid
        return None

    def _check_alive(self, proc: _Proc, what: str) -> None:
        assert proc.popen is not None
        if proc.popen.poll() is not None:
            raise self._failure(proc, f"exited with status {proc.popen.returncode} {what}")

    def _await_boot(self, deadline: float) -> None:
        """Until every node's AMQP, MQTT and management ports answer (the plugins start last)."""
        pending = list(self._procs)
        while True:
            for proc in list(pending):
                self._check_alive(proc, "while starting")
                if proc.beam_pid is None:
                    proc.beam_pid = self._find_beam(proc)
                if all(_port_open(p) for p in (proc.amqp_port, proc.mqtt_port, proc.http_port)):
                    pending.remove(proc)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise self._failure(pending[0], "did not open its ports in time")
            time.sleep(0.2)

    def _join(self, deadline: float) -> None:
        """stop_app on the others in parallel, then join_cluster and start_app one node after the other."""
        first, others = self._procs[0], self._procs[1:]
        if not others:
            return

        def left() -> float:
            return max(5.0, deadline - time.monotonic())

        def each(fn: Callable[[_Proc], None], procs: list[_Proc]) -> None:
            errors: list[BaseException] = []

            def run(p: _Proc) -> None:
                try:
                    fn(p)
                except BaseException as exc:  # re-raised below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(p,)) for p in procs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]

        def ctl(p: _Proc, *args: str) -> None:
            try:
                self._ctl(p.name, *args, timeout=left())
            except subprocess.CalledProcessError as exc:
                raise self._failure(p, f"`rabbitmqctl {' '.join(args)}` failed: {exc.stdout}{exc.stderr}") from exc
            except subprocess.TimeoutExpired as exc:
                raise self._failure(p, f"`rabbitmqctl {' '.join(args)}` timed out") from exc

        each(lambda p: ctl(p, "stop_app"), others)
        # One node at a time: two nodes in start_app at once can deadlock the MQTT plugin's Raft
        # cluster (mqtt_node, for client ID tracking): both call the other for a leader that never
        # comes, and start_app fails a minute later (seen on 3.10.8).
        for p in others:
            ctl(p, "join_cluster", first.name)
            ctl(p, "start_app")

    def _running_nodes(self) -> set[str]:
        out = self._ctl(self._procs[0].name, "cluster_status", "--formatter", "json", timeout=30)
        status = json.loads(out)
        return set(status.get("running_nodes", []))

    def _await_cluster(self, deadline: float) -> None:
        want = {p.name for p in self._procs}
        while True:
            for proc in self._procs:
                self._check_alive(proc, "while clustering")
            ports = [port for p in self._procs for port in (p.amqp_port, p.mqtt_port, p.http_port)]
            running: set[str] = set()
            if all(_port_open(port) for port in ports):
                with contextlib.suppress(subprocess.SubprocessError, ValueError):
                    running = self._running_nodes()
                if running >= want:
                    return
            if time.monotonic() > deadline:
                raise RabbitUnavailableError(
                    f"RabbitMQ cluster did not come up in time: running {sorted(running)}, want {sorted(want)}"
                )
            time.sleep(0.3)

    # --- stop -----------------------------------------------------------------------------------

    def stop(self, grace: float = 10) -> None:
        """SIGTERM every node (its sh wrapper and beam.smp), SIGKILL whatever of their process trees
        is left after `grace` seconds. Safe to call twice, and after a start() that failed halfway.

        The tree is followed by pid and start time, not by process group: erl_child_setup (and the
        port programs it spawns: inet_gethost, the disk monitor's sh) each call setsid()."""
        with self._lock:
            procs = [p for p in self._procs if p.popen is not None]
            tracked: dict[int, int] = {}  # pid -> start time, so that a reused pid is never signalled
            for p in procs:
                assert p.popen is not None
                tracked |= _tree(p.popen.pid)
                if p.beam_pid is not None:
                    tracked |= _tree(p.beam_pid)
                for pid in (p.beam_pid, p.popen.pid):
                    if pid is not None and pid in tracked:
                        _signal(pid, tracked[pid], signal.SIGTERM)
            end = time.monotonic() + grace
            while True:
                for p in procs:
                    assert p.popen is not None
                    p.popen.poll()  # reap the sh wrapper
                live = {pid: st for pid, st in tracked.items() if _started(pid) == st}
                for pid in list(live):  # children born during shutdown
                    tracked |= _tree(pid)
                if not live or time.monotonic() > end:
                    break
                time.sleep(0.1)
            for pid, st in sorted(tracked.items(), key=lambda kv: _comm(kv[0]) != "beam.smp"):
                _signal(pid, st, signal.SIGKILL)
            for p in procs:
                assert p.popen is not None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=5)
                p.popen = None
        if self._registered:
            atexit.unregister(self.stop)
            self._registered = False
