"""Helpers of the second-factor tests: enrol through the API, and TOTP codes computed as an
authenticator app computes them (pyotp), for the current step or one before it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp

from tests.conftest import bearer

STEP = 30


@dataclass(frozen=True)
class Factor:
    secret: str
    recovery_codes: list[str]


async def away_from_step_edge(margin: float = 3.0) -> None:
    """Wait out the last `margin` seconds of a 30 s step, so a code computed now is still of the
    step the server sees when the request arrives."""
    into = time.time() % STEP
    if into > STEP - margin:
        await asyncio.sleep(STEP - into + 0.1)


def code(secret: str, steps_back: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() - steps_back * STEP)


def wrong_code(secret: str) -> str:
    """Six digits that are not the code of the current, previous or next step."""
    taken = {code(secret, back) for back in (-1, 0, 1, 2)}
    return next(candidate for candidate in (f"{n:06d}" for n in range(1000)) if candidate not in taken)


async def enrol(client: httpx.AsyncClient, tokens: dict[str, Any]) -> Factor:
    """Enrol and confirm with the code of the *previous* step, so that the current step's code is
    still unused for the login that usually follows."""
    started = await client.post("/v1/users/me/mfa/totp", headers=bearer(tokens))
    assert started.status_code == 201, started.text
    secret = started.json()["secret"]
    await away_from_step_edge()
    confirmed = await client.post(
        "/v1/users/me/mfa/totp/confirm", json={"code": code(secret, 1)}, headers=bearer(tokens)
    )
    assert confirmed.status_code == 200, confirmed.text
    return Factor(secret, confirmed.json()["recovery_codes"])


async def password_step(client: httpx.AsyncClient, username: str, password: str = "correct horse battery") -> str:
    response = await client.post("/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "mfa_required", body
    return str(body["mfa_token"])


async def second_step(client: httpx.AsyncClient, mfa_token: str, **factor: str) -> httpx.Response:
    return await client.post("/v1/auth/mfa", json={"mfa_token": mfa_token, **factor})
