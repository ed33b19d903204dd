"""Benchmark helper: the processes a benchmark starts and watches. Environment cleaning, children whose output
goes to a file and that are stopped on the way out, CPU time from /proc, waiting for servers to go quiet,
warning lines in their logs, the open-files limit and a hard time limit for the whole run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Addresses, hex ids and numbers: blanked so that one kind of log line or failure counts once.
VOLATILE = re.compile(r"0x[0-9a-fA-F]+|[0-9a-f]{8,}|\d+")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Locked|Timeout)\b.*")


def clean_env() -> dict[str, str]:
    """This process's environment for a child, without HANDSHAKE_* and with the repository importable."""
    # Inherited HANDSHAKE_* variables (a config file, cheap argon2 from a test shell...) would skew the
    # figures: the benchmark must run on the defaults, argon2 included.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDSHAKE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --- CPU time ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a whole process (all its threads), from /proc; nan if unreadable."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu() -> float:
    """This process's own CPU seconds (the benchmark's clients)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quiet(pids: Sequence[int | None], before: list[float], quiet: float) -> bool:
    # Under `quiet` of a core over the 200 ms since `before`; nan (unreadable) counts as idle.
    busy = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    return all(not (b > quiet * 0.2) for b in busy)


def settle(pids: Sequence[int | None], *, quiet: float = 0.1, longest: float = 3.0) -> None:
    """Wait until the servers are idle: a run's tail (presence writes, queued deliveries) would otherwise
    steal CPU from the next run. Idle: under `quiet` of a core over 200 ms; at most `longest` s."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(0.2)
        if _quiet(pids, before, quiet):
            return


async def settle_async(pids: Sequence[int | None], *, quiet: float = 0.15, longest: float = 4.0) -> None:
    """`settle` inside an event loop (the loop's own clients keep running meanwhile)."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        await asyncio.sleep(0.2)
        if _quiet(pids, before, quiet):
            return


# --- children ---------------------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a server runs its shutdown), then SIGKILL after 15 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class Child:
    """A subprocess whose output goes to a file (never an unread pipe), stopped on exit: all of them are
    listed in CHILDREN, which `stop_children` stops (each benchmark's main calls it in a `finally`)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        stdout = popen.pop("stdout", None)
        # Output to the log file; with a pipe for stdout (a READY line), stderr alone goes there.
        stdout, stderr = (self._log, subprocess.STDOUT) if stdout is None else (stdout, self._log)
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, **popen)
        CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


CHILDREN: list[Child] = []


def stop_children() -> None:
    """Every child started so far, the last first."""
    for child in reversed(CHILDREN):
        child.stop()


def wait_port(port: int, child: Child, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not listen on {port} in {timeout:.0f} s:\n{child.log_tail()}")


# --- logs -------------------------------------------------------------------------------------------------


def log_lines(path: Path, keep: Callable[[str], bool]) -> Counter[str]:
    """The lines `keep` wants, volatile parts (addresses, numbers, hex) blanked so that one kind counts once."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if line.strip() and keep(line):
                found[VOLATILE.sub("#", line)[:200]] += 1
    return found


def log_problems(path: Path) -> Counter[str]:
    """Warning/error lines and the last line of each traceback, by kind."""
    return log_lines(
        path, lambda line: line.startswith(("WARNING", "ERROR", "CRITICAL")) or bool(_EXCEPTION_LINE.match(line))
    )


def print_log_summary(name: str, found: Counter[str], top: int = 10) -> None:
    if found:
        print(f"\n[{name}] log: {sum(found.values())} warning/error lines, by kind (# = a number):")
        for line, count in found.most_common(top):
            print(f"  {count:5d}× {line[:170]}")


# --- limits -----------------------------------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """The soft open-files limit up to the hard one (children started after inherit it): thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("the benchmark's hard time limit was reached")


def set_time_limit(seconds: float) -> None:
    """A hard stop (SIGALRM raises TimeoutError; SIGTERM exits): either way the callers' `finally` blocks
    still stop every child. `set_time_limit(0)` clears it."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(seconds))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
