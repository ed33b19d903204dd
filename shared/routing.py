"""A request's route found among the few that could match its path, not by trying all of them in turn.

Starlette and FastAPI match a request against every route in order until one matches: ~80 routes, and
the device connector's (commands, state, the broker hooks) come last, so each of those requests tried
~70 regular expressions first (issue 11: 9% of the event loop's time under commands).

A route whose parameters each match within one segment (Starlette's str, int, float and uuid) can only
match a path with as many segments as its own, and only if the path's first two segments are its own
where those are literal. So the routes are split, once, into shards by (segment count, first segment,
second segment), each a copy of the router holding the routes of its key and the routes that may match
any path (mounts, `:path` or an app's own convertors, a parameter among the first two segments), in
their original order. A request goes to its shard's own (FastAPI's) dispatch: the first route that
matches in the shard is the first that matches in the whole list, since no route left out could have
matched. When nothing in the shard matches, the shard's fallback is the whole router,
which answers exactly as before (405, the trailing-slash redirect, 404).

`lean` serves the hottest routes without FastAPI's request handler (see there)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.convertors import FloatConvertor, IntegerConvertor, StringConvertor, UUIDConvertor
from starlette.routing import BaseRoute, Route, Router, compile_path, request_response
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

Key = tuple[int, str, str]
# Starlette's convertors that match within one path segment (`:path` spans several).
_ONE_SEGMENT = (StringConvertor, IntegerConvertor, FloatConvertor, UUIDConvertor)


def path_key(path: str) -> Key:
    """(segment count, first segment, second segment) of a request path ('' where there is none)."""
    parts = path.split("/")
    return len(parts), parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else ""


def route_key(route: BaseRoute) -> Key | None:
    """The only key of the paths `route` can match; None for a route that may match paths of any key
    (not a plain route, or a parameter whose convertor may match a "/": `:path`, or an app's own)."""
    if not isinstance(route, Route):
        return None
    if not all(type(convertor) in _ONE_SEGMENT for convertor in route.param_convertors.values()):
        return None
    parts = route.path.split("/")
    if any("{" in part for part in parts[1:3]):
        return None
    return path_key(route.path)


class RouteIndex:
    """The innermost ASGI app of `router` (its `middleware_stack`): each HTTP request goes to its
    shard. Rebuilt when routes are added after the first request."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.whole = router.app
        self._built_for = -1
        self._shards: dict[Key, Router] = {}
        self._anywhere: Router = router

    @classmethod
    def install(cls, router: Router) -> bool:
        """Put an index in front of `router`'s routes; False (and nothing changed) when the router has
        middleware of its own, which the index would bypass."""
        if router.middleware_stack != router.app:
            log.warning("route index not installed: the router has middleware of its own")
            return False
        router.middleware_stack = cls(router)
        return True

    def _build(self) -> None:
        routes = list(self.router.routes)
        keys = [route_key(route) for route in routes]
        self._shards = {
            key: self._shard([route for route, own in zip(routes, keys, strict=True) if own is None or own == key])
            for key in {key for key in keys if key is not None}
        }
        self._anywhere = self._shard([route for route, own in zip(routes, keys, strict=True) if own is None])
        self._built_for = len(routes)

    def _shard(self, routes: list[BaseRoute]) -> Router:
        shard = copy.copy(self.router)  # the same settings; its own list of routes
        shard.routes = routes
        shard.default = self.whole  # nothing matched here: the whole router answers
        return shard

    def shard_for(self, path: str) -> Router:
        if self._built_for != len(self.router.routes):
            self._build()
        return self._shards.get(path_key(path), self._anywhere)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.whole(scope, receive, send)
            return
        scope.setdefault("router", self.router)
        await self.shard_for(scope["path"]).app(scope, receive, send)


Handler = Callable[[Request], Awaitable[Response]]
# OpenAPI of a path parameter, by its Starlette convertor (a string otherwise).
_SCHEMAS: dict[type, dict[str, str]] = {
    IntegerConvertor: {"type": "integer"},
    FloatConvertor: {"type": "number"},
    UUIDConvertor: {"type": "string", "format": "uuid"},
}


def lean(
    router: APIRouter, path: str, *, method: str, openapi_extra: dict[str, Any] | None = None
) -> Callable[[Handler], Handler]:
    """Register `handler(request) -> Response` as the route `method path` of `router`: documented as
    FastAPI documents any route (its path parameters from the path; say what else its signature does
    not in `openapi_extra`: the body, the answer), but served by Starlette's request handler instead
    of FastAPI's. The handler calls what would have been its dependencies itself.

    FastAPI's handler solves the dependencies, builds a response object for them and serializes the
    returned value, on every request: with three dependencies, a quarter of a command's time on the
    event loop (issue 11, measured A/B on one server: 1.27 ms of the main thread a command through
    FastAPI, 0.97 ms lean, 1.03 ms with FastAPI and no dependencies). Errors are answered the same
    way: Starlette's handler passes them to the app's exception handlers, as FastAPI's does."""

    _, _, convertors = compile_path(path)
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _SCHEMAS.get(type(convertor), {"type": "string"})}
        for name, convertor in convertors.items()
    ]

    def register(handler: Handler) -> Handler:
        router.add_api_route(
            path, handler, methods=[method], openapi_extra={"parameters": parameters, **(openapi_extra or {})}
        )
        route = router.routes[-1]
        # Nothing FastAPI would have run for it is dropped: no dependencies of the router's or the app's.
        assert isinstance(route, APIRoute) and not route.dependant.dependencies, f"{path}: not lean"
        route.app = request_response(handler)
        return handler

    return register


# What a `lean` route that answers a JSON object says of its answer (its signature says nothing).
JSON_OBJECT_ANSWER: dict[str, Any] = {
    "responses": {
        "200": {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}}
    }
}
