"""Helpers for testing against Handshake, for our suite and for third-party services: forge tokens
with a deployment's own key (to test that bad claims are refused), and find free ports."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

import jwt

from shared.keys import KeyDirectory


def free_port() -> int:
    """A port free now, chosen below the kernel's ephemeral range: a port the kernel hands out to
    outgoing connections can be taken between this call and the server's bind."""
    for _ in range(200):
        port = random.randint(20_000, 32_000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
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
