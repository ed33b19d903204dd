"""The route index (shared.routing, issue 11) picks the route the plain router picks, for every route of
the whole platform and for paths that match none; what nothing matches is answered as before."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Match, Route

from shared.app import create_app
from shared.routing import RouteIndex
from shared.settings import Settings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAMPLES = {"int": "7", "float": "1.5", "uuid": str(uuid.uuid4()), "path": "a/b.css", "str": "X7"}
ODD_PATHS = [
    "/",
    "//",
    "/v1",
    "/v1/",
    "/v1/devices/",
    "/v1//devices",
    "/v1/devices//commands",
    "/v1/devices/X/commands/",
    "/v1/devices/X/commands/extra",
    "/v1/users/me/",
    "/healthz/",
    "/docs/assets/swagger-ui.css",
    "/docs/assets/",
    "/nope",
    "/V1/DEVICES/X/COMMANDS",
    "/v1/devices/%2F/commands",
]


def decide(routes: list[BaseRoute], method: str, path: str) -> tuple[BaseRoute, Match] | None:
    """What Starlette's dispatch picks from `routes`: the first full match, else the first partial one."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route, match
        if match is Match.PARTIAL and partial is None:
            partial = route, match
    return partial


def sample_path(route: Route) -> str:
    return re.sub(r"\{(\w+)(?::(\w+))?\}", lambda m: SAMPLES[m.group(2) or "str"], route.path)


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", keys_dir=tmp_path / "keys"))


def index_of(app: FastAPI) -> RouteIndex:
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    return index


def test_every_route_of_the_platform_is_found_as_by_a_plain_scan(app: FastAPI) -> None:
    index = index_of(app)
    routes = list(app.router.routes)
    paths = [sample_path(route) for route in routes if isinstance(route, Route)] + ODD_PATHS
    assert len(paths) > 80
    for path in paths:
        shard = index.shard_for(path)
        assert len(shard.routes) < len(routes)
        for method in METHODS:
            expected = decide(routes, method, path)
            found = decide(shard.routes, method, path)
            if found is None:
                assert expected is None, (method, path)  # the shard's fallback then asks the whole router
            else:
                assert found == expected, (method, path)


def test_the_commands_route_is_among_a_few_candidates(app: FastAPI) -> None:
    shard = index_of(app).shard_for("/v1/devices/ABC/commands")
    assert len(shard.routes) <= 8
    assert decide(shard.routes, "POST", "/v1/devices/ABC/commands") is not None


@pytest.mark.parametrize("path", ODD_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_what_no_route_takes_is_answered_as_without_the_index(tmp_path: Path, path: str, method: str) -> None:
    """404, 405 and the trailing-slash redirect are the same with and without the index (answered without
    a lifespan: none of them reaches a route's code)."""
    answers = []
    for indexed in (True, False):
        app = create_app(
            Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", keys_dir=tmp_path / f"keys{indexed}")
        )
        if not indexed:
            app.router.middleware_stack = app.router.app
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.request(method, path)
        if response.status_code in (404, 405) or 300 <= response.status_code < 400:
            answers.append((response.status_code, response.headers.get("location"), response.headers.get("allow")))
        else:
            answers.append((response.status_code, None, None))
    assert answers[0] == answers[1]


async def test_a_route_added_after_the_first_request_is_found(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/v1/late/route")).status_code == 404

        async def late(request: object) -> PlainTextResponse:
            return PlainTextResponse("late")

        app.router.routes.append(Route("/v1/late/route", late))
        response = await http.get("/v1/late/route")
    assert (response.status_code, response.text) == (200, "late")


def test_a_router_with_middleware_of_its_own_is_left_alone(app: FastAPI) -> None:
    router = app.router
    router.middleware_stack = PlainTextResponse("wrapped")  # stands for any middleware around the router
    assert not RouteIndex.install(router)
    assert isinstance(router.middleware_stack, PlainTextResponse)


class Slashy(Convertor[str]):
    """An app's own convertor whose values may hold a "/"."""

    regex = ".+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


async def test_a_route_whose_parameter_spans_segments_keeps_its_place(app: FastAPI) -> None:
    register_url_convertor("handshake_test_slashy", Slashy())

    async def spanning(request: object) -> PlainTextResponse:
        return PlainTextResponse("spanning")

    async def narrow(request: object) -> PlainTextResponse:
        return PlainTextResponse("narrow")

    # Listed first, the spanning route takes /v1/files/x/1 from the narrower one after it.
    app.router.routes.insert(0, Route("/v1/files/{rest:handshake_test_slashy}", spanning))
    app.router.routes.append(Route("/v1/files/x/{n}", narrow))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/v1/files/x/1")
    assert (response.status_code, response.text) == (200, "spanning")
