"""/metrics (SPEC §2): every request counted by method and status class, commands by result."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and ",".join(sorted(found.group(1).split(","))) == wanted:
            return float(found.group(2))
    return 0.0


async def test_every_request_is_counted_by_method_and_status_class(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    for _ in range(3):
        assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/v1/no-such-thing")).status_code == 404
    assert (await client.request("BREW", "/healthz")).status_code == 405
    after = (await client.get("/metrics")).text
    counted = "handshake_http_requests_total"
    assert sample(after, counted, method="GET", status="2xx") - sample(before, counted, method="GET", status="2xx") >= 4
    assert sample(after, counted, method="GET", status="4xx") - sample(before, counted, method="GET", status="4xx") == 1
    # Any token is a method to HTTP/1.1: an unknown one is counted as OTHER, not as a series of its own.
    assert (
        sample(after, counted, method="OTHER", status="4xx") - sample(before, counted, method="OTHER", status="4xx")
        == 1
    )
    assert "BREW" not in after


async def test_a_client_gone_before_its_body_was_read_is_no_server_error(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection closed while the request waited to read its body (wrk closing its connections at
    the end of a run does it): nobody is left to answer, nothing is logged as an error, and /metrics
    counts it as the client's doing (4xx), as nginx's 499 does."""
    before = (await client.get("/metrics")).text
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/auth/login",
        "raw_path": b"/v1/auth/login",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), (b"content-length", b"48")],
        "client": ("203.0.113.7", 40000),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR):
        await app.state.lifespan_app(scope, receive, send)
    assert sent == []
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    after = (await client.get("/metrics")).text
    counted = "handshake_http_requests_total"
    for status, more in (("4xx", 1), ("5xx", 0)):
        grown = sample(after, counted, method="POST", status=status) - sample(
            before, counted, method="POST", status=status
        )
        assert grown == more, status
