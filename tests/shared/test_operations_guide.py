"""docs/operations.md cannot rot: every `handshake` command in its `sh` blocks is run here, in the
order written, against one deployment (SQLite, a key directory, a server running meanwhile). Only the
ports change (free ones) and `KID` becomes a real kid, as an operator would fill it in."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from shared.testing import free_port
from tests.shared.test_cli import HANDSHAKE, START_TIMEOUT, cli, make_env

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
SH_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def guide_commands() -> list[list[str]]:
    blocks = SH_BLOCK.findall(GUIDE.read_text())
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line.split()[1:] for line in lines if line.startswith("handshake ")]


def test_the_guide_has_the_commands_an_operator_needs() -> None:
    commands = [" ".join(args[:2]) for args in guide_commands()]
    for needed in ("migrate", "serve --host", "keys rotate", "keys list", "keys revoke", "users create"):
        assert any(command.startswith(needed) for command in commands), (needed, commands)


def test_every_command_in_the_guide_runs(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    server: subprocess.Popen[bytes] | None = None
    try:
        for args in guide_commands():
            if args[0] == "serve":
                port = free_port()
                args = [str(port) if a == "8000" else a for a in args] + ["--mqtt-port", str(free_port())]
                server = subprocess.Popen([*HANDSHAKE, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
                deadline = time.monotonic() + START_TIMEOUT
                while True:
                    assert server.poll() is None, f"`handshake {' '.join(args)}` exited with {server.returncode}"
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "the server of the guide did not get ready"
                    time.sleep(0.2)
                continue
            if "KID" in args:
                listed = cli(tmp_path, env, "keys", "list").stdout.splitlines()
                retired = [line.split()[0] for line in listed if "verify-only" in line]
                assert retired, listed
                args = [retired[0] if a == "KID" else a for a in args]
            result = cli(tmp_path, env, *args)
            shown = f"`handshake {' '.join(args)}`: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
            assert result.returncode == 0, shown
            assert "Traceback" not in result.stderr, shown
        assert server is not None, "the guide never starts the server"
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            # (0, or the signal itself: uvicorn re-raises it once it has shut down cleanly)
            assert server.wait(timeout=30) in (0, -signal.SIGTERM), "the guide's server did not stop on SIGTERM"
