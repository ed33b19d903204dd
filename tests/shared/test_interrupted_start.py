"""Ctrl-C (SIGINT) and SIGTERM at any moment of a real `handshake serve`'s start-up: while its modules
load, while it migrates, once the admin exists, while the application starts (broker, journal, key and
revocation watchers), and once it serves. Each time a clean stop, never a traceback, and the exit the
README documents: after SIGINT the one line `handshake: interrupted` and exit code 130, after SIGTERM
an end by the signal itself."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from shared.settings import Settings
from shared.testing import free_port
from tests.conftest import PG_ADMIN_DSN, Backend, _reset_postgres
from tests.shared.test_cli import HANDSHAKE, PYTHON_STARTING, assert_one_line_failure, make_env

MIGRATION_LOCK = 0x48534B  # shared.migrations' advisory lock
PROMPT = 5.0  # s from the signal to the end: the service's shutdown bound
SQLITE_BUSY_TIMEOUT = 5.0


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, found: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not found():
            assert self.proc.poll() is None, f"serve ended before {what}: {self.proc.returncode}\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s\n{self.tail()}"
            time.sleep(0.02)

    def tail(self, stderr: int = 3000) -> str:
        return f"stdout: {self.stdout()[-1500:]}\nstderr: {self.stderr()[-stderr:]}"

    def stop_with(self, sig: int) -> float:
        """Send the signal; the seconds until the process has ended."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # every stack to stderr: what it waits for
            time.sleep(2)
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"serve did not stop within 30 s of signal {sig}\n{self.tail(stderr=20_000)}")
        return time.monotonic() - sent


def launch(workdir: Path, env: dict[str, str], *args: str) -> Serve:
    out, err = workdir / f"serve-{secrets.token_hex(3)}.out", workdir / f"serve-{secrets.token_hex(3)}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([*HANDSHAKE, "serve", *args], cwd=workdir, env=env, stdout=stdout, stderr=stderr)
    return Serve(proc, out, err)


def assert_clean_stop(serve: Serve, sig: int) -> None:
    shown = f"exit {serve.proc.returncode} after signal {sig}\n{serve.tail()}"
    assert "Traceback" not in serve.stdout() + serve.stderr(), shown
    assert "KeyboardInterrupt" not in serve.stderr() and "CancelledError" not in serve.stderr(), shown
    if sig == signal.SIGINT:
        assert serve.proc.returncode == 130, shown
        assert serve.stderr().rstrip().splitlines()[-1] == "handshake: interrupted", shown
    else:
        assert serve.proc.returncode == -signal.SIGTERM, shown
    said = [line for line in serve.stderr().splitlines() if line.startswith(("handshake:", "ERROR", "WARNING"))]
    assert said == (["handshake: interrupted"] if sig == signal.SIGINT else []), shown


def backend_env(workdir: Path, backend: Backend) -> dict[str, str]:
    """A deployment of its own in `workdir`; on PostgreSQL the suite's database, emptied first so that
    `serve` creates the admin (and prints it) as on a first start."""
    if backend.database_url is None:
        return make_env(workdir)
    asyncio.run(_reset_postgres(Settings(database_url=backend.database_url, keys_dir=workdir / "keys")))
    return make_env(
        workdir,
        HANDSHAKE_DATABASE_URL=backend.database_url,
        HANDSHAKE_REDIS_URL=backend.redis_url or "",
        HANDSHAKE_REDIS_PREFIX=f"hs-int-{secrets.token_hex(4)}:",
    )


def ports() -> list[str]:
    return ["--http-port", str(free_port()), "--mqtt-port", str(free_port())]


def _printed(serve: Serve, text: str, *, stream: str = "stdout", then: float = 0.0) -> None:
    serve.wait_for(lambda: text in (serve.stdout() if stream == "stdout" else serve.stderr()), repr(text))
    time.sleep(then)


# When the signal is sent: a moment of start-up, named by what the process has printed by then.
MOMENTS: dict[str, Callable[[Serve], None]] = {
    "while the modules load": lambda serve: time.sleep(0.3),
    "once the admin exists": lambda serve: _printed(serve, "Created the user"),
    "as the application starts": lambda serve: _printed(serve, "Handshake ("),
    "while the application starts": lambda serve: _printed(serve, "Handshake (", then=0.1),
    "once it serves": lambda serve: _printed(serve, "Uvicorn running", stream="stderr"),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_at_any_moment_of_start_up_is_a_clean_stop(
    backend: Backend, tmp_path: Path, moment: str, sig: int
) -> None:
    for _ in range(4):
        serve = launch(tmp_path, backend_env(tmp_path, backend), *ports())
        MOMENTS[moment](serve)
        took = serve.stop_with(sig)
        if PYTHON_STARTING not in serve.stderr():
            break
        # On a loaded machine the interpreter's own start (its site module) can outlast the moment:
        # a signal then is Python's to report, before any code of ours. So once more.
    assert_clean_stop(serve, sig)
    assert took < PROMPT, f"{took:.1f} s to stop {moment}\n{serve.tail()}"


def test_sigusr1_writes_every_stack_and_the_server_goes_on(backend: Backend, tmp_path: Path) -> None:
    """What an operator (or this suite, when serve does not stop) sends to see what a server waits for."""
    serve = launch(tmp_path, backend_env(tmp_path, backend), *ports())
    _printed(serve, "Uvicorn running", stream="stderr")
    serve.proc.send_signal(signal.SIGUSR1)
    serve.wait_for(lambda: "--- <Task" in serve.stderr(), "the tasks' stacks")
    assert "Current thread" in serve.stderr() or "Thread 0x" in serve.stderr(), serve.tail()
    assert serve.proc.poll() is None, serve.tail()
    serve.stop_with(signal.SIGTERM)
    assert serve.proc.returncode == -signal.SIGTERM, serve.tail()


@contextlib.contextmanager
def migration_held(backend: Backend, workdir: Path) -> Iterator[Callable[[Serve], bool]]:
    """Another process holding the database while `serve` migrates (PostgreSQL: the migration lock that
    several services starting at once wait on; SQLite: a write transaction on the file). Yields a
    check that the server has reached the wait."""
    if backend.database_url is None:
        path = workdir / "h.db"
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # as serve leaves it: it opens, then waits to write
        db.execute("BEGIN IMMEDIATE")

        def waiting_sqlite(serve: Serve) -> bool:
            fds = Path(f"/proc/{serve.proc.pid}/fd")
            with contextlib.suppress(OSError):
                return any(str(path) in str(fd.readlink()) for fd in fds.iterdir())
            return False

        try:
            yield waiting_sqlite
        finally:
            db.execute("ROLLBACK")
            db.close()
        return

    dsn = backend.database_url.replace("+asyncpg", "")

    async def hold() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn)
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        return conn

    loop = asyncio.new_event_loop()
    held = loop.run_until_complete(hold())

    def waiting_pg(serve: Serve) -> bool:
        async def ask() -> bool:
            conn = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted"
                return bool(await conn.fetchval(query, MIGRATION_LOCK))
            finally:
                await conn.close()

        return asyncio.run(ask())

    try:
        yield waiting_pg
    finally:
        loop.run_until_complete(held.close())
        loop.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_migrating_is_a_clean_stop(backend: Backend, tmp_path: Path, sig: int) -> None:
    env = backend_env(tmp_path, backend)
    with migration_held(backend, tmp_path) as waiting:
        serve = launch(tmp_path, env, *ports())
        serve.wait_for(lambda: waiting(serve), "wait for the migration")
        time.sleep(0.2)
        took = serve.stop_with(sig)
    assert_clean_stop(serve, sig)
    # A sqlite3 call waiting for another process's lock cannot be interrupted: it ends at SQLite's busy
    # timeout (5 s, shared.db), then the stop goes on.
    bound = PROMPT if backend.database_url else SQLITE_BUSY_TIMEOUT + PROMPT / 2
    assert took < bound, f"{took:.1f} s to stop while migrating\n{serve.tail()}"
    assert "Created the user" not in serve.stdout(), serve.tail()


def clustered_env(workdir: Path) -> dict[str, str]:
    nothing = f"127.0.0.1:{free_port()}"  # no broker listens there
    return make_env(
        workdir,
        HANDSHAKE_MQTT_BROKER="rabbitmq",
        HANDSHAKE_MQTT_BROKER_URL=f"mqtt://user:password@{nothing}",
        HANDSHAKE_MQTT_BROKER_API_URL=f"http://user:password@{nothing}",
        HANDSHAKE_MQTT_HOOK_SECRET="hook secret",
    )


def test_ctrl_c_while_waiting_for_the_broker_stops_at_once(tmp_path: Path) -> None:
    """The application's start-up waits up to 10 s for a clustered broker: Ctrl-C ends that wait at
    once, and the server never starts serving."""
    serve = launch(tmp_path, clustered_env(tmp_path), "--http-port", str(free_port()), "--service", "device-connector")
    serve.wait_for(lambda: "Handshake (" in serve.stdout(), "banner")
    time.sleep(1)
    took = serve.stop_with(signal.SIGINT)
    assert_clean_stop(serve, signal.SIGINT)
    assert took < PROMPT, f"{took:.1f} s to stop while waiting for the broker\n{serve.tail()}"
    assert "Uvicorn running" not in serve.stderr(), serve.tail()


def test_a_broker_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    serve = launch(tmp_path, clustered_env(tmp_path), "--http-port", str(free_port()), "--service", "device-connector")
    serve.proc.wait(timeout=60)
    result = subprocess.CompletedProcess(serve.proc.args, serve.proc.returncode, serve.stdout(), serve.stderr())
    assert_one_line_failure(result, "cannot reach the MQTT broker", "HANDSHAKE_MQTT_BROKER_URL")


def test_a_migration_that_cannot_get_the_database_is_one_line(backend: Backend, tmp_path: Path) -> None:
    """Another process holding the database longer than a statement may wait: one line, exit 2."""
    env = backend_env(tmp_path, backend)
    with migration_held(backend, tmp_path):
        serve = launch(tmp_path, env, *ports())
        serve.proc.wait(timeout=60)
    result = subprocess.CompletedProcess(serve.proc.args, serve.proc.returncode, serve.stdout(), serve.stderr())
    assert_one_line_failure(result, "could not bring the database schema up to date", "another process")


def test_a_new_sqlite_file_another_process_holds_is_one_line_saying_so(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "h.db", isolation_level=None)  # not WAL yet: it cannot even be opened
    db.execute("BEGIN IMMEDIATE")
    try:
        serve = launch(tmp_path, make_env(tmp_path), *ports())
        serve.proc.wait(timeout=60)
    finally:
        db.close()
    result = subprocess.CompletedProcess(serve.proc.args, serve.proc.returncode, serve.stdout(), serve.stderr())
    line = assert_one_line_failure(result, "another process holds it locked")
    assert "start it" not in line, line


STUCK_STOP = """
import signal, time
from shared import signals
signals.STOP_DEADLINE = 0.5
with signals.StopSignals():
    signal.raise_signal(signal.{sig})
    time.sleep(30)  # a clean-up that never ends
"""


@pytest.mark.parametrize(("sig", "status"), [("SIGTERM", 128 + signal.SIGTERM), ("SIGINT", 130)])
def test_a_stop_stuck_past_its_deadline_ends_with_every_stack_written(sig: str, status: int) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", STUCK_STOP.format(sig=sig)], capture_output=True, text=True, timeout=30, check=False
    )
    assert time.monotonic() - started < 15, done.stderr
    assert done.returncode == status, done.stderr
    assert "still stopping" in done.stderr and "most recent call first" in done.stderr, done.stderr


LATE_REPLY = """
import asyncio, signal, threading
from shared import signals
with signals.StopSignals() as stops:
    {stop}
    loop = asyncio.new_event_loop()
    loop.close()  # the loop a database thread's statement was started from, gone before its reply
# The reply comes as the process ends, after the stop's clean-up (`serve` ends with stops.exit()).
late = threading.Thread(target=loop.call_soon_threadsafe, args=(print,))
late.start()
late.join()
"""


@pytest.mark.parametrize(("stop", "reported"), [("signal.raise_signal(signal.SIGTERM)", False), ("pass", True)])
def test_a_reply_to_a_closed_loop_after_a_stop_signal_is_no_traceback(stop: str, reported: bool) -> None:
    # aiosqlite's thread finishing a statement whose caller the stop cancelled (seen once under load,
    # with the signal 0.1 s into the application's start). Without a stop it is a fault, and says so.
    done = subprocess.run(
        [sys.executable, "-c", LATE_REPLY.format(stop=stop)], capture_output=True, text=True, timeout=30, check=False
    )
    assert ("Event loop is closed" in done.stderr) is reported, done.stderr
