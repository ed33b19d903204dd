"""/metrics (SPEC §2): every request counted by method and status class, commands by result."""

from __future__ import annotations

import re

import httpx


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
