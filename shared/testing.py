"""Helpers for testing against Handshake, for our suite and for third-party services: forge tokens
with a deployment's own key (to test that bad claims are refused), and find free ports."""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import jwt

from shared.keys import KeyDirectory

_PORTS = (20_000, 32_000)  # below the kernel's ephemeral range
_handed_out: deque[int] = deque(maxlen=256)  # free when handed out, maybe not bound yet


def _port_range() -> tuple[int, int]:
    """The whole range, or under pytest-xdist a slice of it per worker (gw0, gw1...): two workers
    then never pick the same port in the moment between one's check and its server's bind."""
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker is None or workers <= 1:
        return _PORTS
    size = (_PORTS[1] - _PORTS[0]) // workers
    low = _PORTS[0] + int(worker.group(1)) % workers * size
    return low, low + size - 1


def free_port() -> int:
    """A port free now, chosen below the kernel's ephemeral range: a port the kernel hands out to
    outgoing connections can be taken between this call and the server's bind. Not one this process
    handed out lately (two calls in a row, before either server binds, must not get the same)."""
    low, high = _port_range()
    for _ in range(200):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def signing_key(keys_dir: Path) -> Any:
    """The current signing key of a key directory (asymmetric algorithms)."""
    keys = [key for key in KeyDirectory(keys_dir).load() if key.retired_at is None]
    if not keys:
        raise LookupError(f"no signing key in {keys_dir}")
    return max(keys, key=lambda key: key.created_at)


def forge(
    keys_dir: Path,
    *,
    claims: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    issuer: str,
    audience: str,
    typ: str = "at+jwt",
    ttl: int = 300,
    drop: tuple[str, ...] = (),
) -> str:
    """A token signed with the deployment's real key, with whatever claims and headers you like."""
    key = signing_key(keys_dir)
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
        "jti": f"forged-{now}-{id(claims)}",
        "sub": "nobody",
        "sid": "nosession",
        **(claims or {}),
    }
    for name in drop:
        payload.pop(name, None)
    all_headers = {"kid": key.kid, "typ": typ, **(headers or {})}
    return jwt.encode(payload, key.private, algorithm=key.alg, headers=all_headers)
