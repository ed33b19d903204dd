"""Bad input (SPEC §11 and §2): malformed JSON, wrong types, oversized or deeply nested bodies, bytes
that are not UTF-8, unknown routes and wrong methods get a 4xx with exactly {"error", "detail"};
never a 500 or a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from shared.context import Context
from tests.conftest import Users, bearer

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LIMIT = 64 * 1024
NESTED = b'{"username": ' + b"[" * 10_000 + b"]" * 10_000 + b', "password": "x"}'
NOT_UTF8 = b'{"username": "\xff\xfe\xfa", "password": "\xc3\x28\xa0\xa1"}'


def assert_error_body(response: httpx.Response, status: int | None = None, code: str | None = None) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    if code is not None:
        assert body["error"] == code, body
    assert "Traceback" not in response.text


async def oversized_chunks() -> AsyncIterator[bytes]:
    """More than 64 KiB, sent chunked: no Content-Length to refuse it by."""
    yield b'{"username": "'
    for _ in range(LIMIT // 1024 + 8):
        yield b"a" * 1024
    yield b'", "password": "x"}'


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[httpx.AsyncClient, str, dict[str, str]], Any]
    status: int | None  # None: any 4xx will do
    code: str | None = None


def post(content: bytes, headers: dict[str, str]) -> Callable[[httpx.AsyncClient, str, dict[str, str]], Any]:
    def send(client: httpx.AsyncClient, path: str, auth: dict[str, str]) -> Any:
        return client.post(path, content=content, headers={**headers, **auth})

    return send


def post_chunked(client: httpx.AsyncClient, path: str, auth: dict[str, str]) -> Any:
    return client.post(path, content=oversized_chunks(), headers={**JSON, **auth})


BODY_CASES = [
    Case("malformed JSON", post(b'{"username": "a", "password": ', JSON), 400, "invalid_request"),
    Case("JSON array", post(b'["username", "password"]', JSON), 400, "invalid_request"),
    Case("JSON string", post(b'"username"', JSON), 400, "invalid_request"),
    Case("wrong types", post(b'{"username": 123, "password": null}', JSON), 422, "validation_error"),
    Case("over 64 KiB with Content-Length", post(b'{"username": "' + b"a" * LIMIT + b'"}', JSON), 413),
    Case("over 64 KiB chunked", post_chunked, 413),
    Case("nested 10000 levels", post(NESTED, JSON), None),
    Case("not UTF-8 (JSON)", post(NOT_UTF8, JSON), None),
    Case("not UTF-8 (form)", post(b"username=\xff\xfe%FF&password=\xc3\x28&token=\xa0\xa1", FORM), None),
    # PostgreSQL's text cannot hold NUL: these were 500s there, the anonymous login among them.
    Case("NUL in a string (JSON)", post(b'{"username": "a\\u0000b", "password": "x\\u0000"}', JSON), 400),
    Case("NUL in a key (JSON)", post(b'{"user\\u0000name": "a", "password": "x"}', JSON), 400),
    Case("NUL in a string (form)", post(b"username=a%00b&password=x&grant_type=password", FORM), 400),
    Case("nested 300 levels", post(b'{"username": "a", "x": ' + b"[" * 300 + b"]" * 300 + b"}", JSON), 400),
]


@pytest.mark.parametrize("case", BODY_CASES, ids=[case.name for case in BODY_CASES])
async def test_bad_body_on_login_gets_a_4xx_with_error_and_detail(client: httpx.AsyncClient, case: Case) -> None:
    response = await case.send(client, "/v1/auth/login", {})
    assert_error_body(response, case.status, case.code)


# Every route of the account manager that reads a body, anonymous and authenticated: none answers 500.
ROUTES = [
    ("/v1/auth/register", False),
    ("/v1/auth/login", False),
    ("/v1/auth/token", False),
    ("/v1/auth/refresh", False),
    ("/v1/auth/introspect", False),
    ("/v1/auth/revoke", False),
    ("/v1/auth/exchange", True),
    ("/v1/users/me/password", True),
    ("/v1/admin/users", True),
]


@pytest.mark.parametrize("case", BODY_CASES, ids=[case.name for case in BODY_CASES])
async def test_bad_body_never_gets_a_500_on_any_route(
    client: httpx.AsyncClient, users: Users, ctx: Context, case: Case
) -> None:
    # An admin, so that every route gets as far as reading the body.
    _, tokens = await users.admin(ctx)
    for path, authenticated in ROUTES:
        response = await case.send(client, path, bearer(tokens) if authenticated else {})
        assert response.status_code < 500, (path, response.status_code, response.text)
        if path in ("/v1/auth/introspect", "/v1/auth/revoke") and response.status_code == 200:
            # A body these could parse: RFC 7662 {"active": false} / RFC 7009 200 for any token.
            assert case.status is None, (path, response.text)
            continue
        assert_error_body(response)
        if case.status == 413:
            assert response.status_code == 413, (path, response.text)


async def test_patch_me_with_bad_bodies_gets_4xx(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    for content, headers in (
        (b'{"email": ', JSON),
        (b"[1, 2]", JSON),
        (b'{"email": 42}', JSON),
        (NESTED.replace(b'"username"', b'"email"'), JSON),
        (NOT_UTF8, JSON),
        (b"e" * (LIMIT + 1), JSON),
    ):
        response = await client.patch("/v1/users/me", content=content, headers={**headers, **bearer(tokens)})
        assert_error_body(response)


async def test_unknown_route_is_404_not_found(client: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/v1/nothing-here"), ("POST", "/v1/auth/nothing"), ("GET", "/v1/users/me/x/y")):
        response = await client.request(method, path)
        assert_error_body(response, 404, "not_found")


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/v1/auth/login"), ("PUT", "/v1/auth/refresh"), ("DELETE", "/.well-known/jwks.json")):
        response = await client.request(method, path)
        assert_error_body(response, 405)
