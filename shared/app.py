"""The composition root: create_app(settings) builds the Context and mounts the services by import
string (shared imports no service). Also the routes every service serves: health, readiness,
metrics and the JWKS, and the one error handler that renders every error as {"error","detail"}."""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import redis.exceptions
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from shared import docs
from shared.bodies import describe
from shared.context import Context
from shared.db import BACKEND_ERRORS
from shared.deadline import RequestDeadline
from shared.deps import CtxDep
from shared.errors import (
    HandshakeError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    ValidationFailedError,
)
from shared.routing import RouteIndex
from shared.settings import Settings

log = logging.getLogger("handshake")

SERVICES = {
    "account-manager": "account_manager.service",
    "device-manager": "device_manager.service",
    "device-connector": "device_connector.service",
}


class RedactSecrets(logging.Filter):
    """Broker hooks carry their secret in the URL (RabbitMQ sends no headers): never into a log line."""

    _SECRET = re.compile(r"([?&]secret=)[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "secret=" in a for a in record.args):
            record.args = tuple(self._SECRET.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "secret=" in record.msg:
            record.msg = self._SECRET.sub(r"\1***", record.msg)
        return True


_REDACT = RedactSecrets()


def load_services(names: Sequence[str]) -> list[ModuleType]:
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(SERVICES[name]))
        except ModuleNotFoundError as exc:
            if exc.name != SERVICES[name]:
                raise
    return modules


# FastAPI's built-in OpenTelemetry (0.16x) asks for the global tracer and meter providers on every
# request even when nothing is configured: a few percent of an everyday request (issue 11). The
# platform's own /metrics counts requests; tracing stays off. Older FastAPI has no such argument.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings,
    *,
    services: Sequence[str] = tuple(SERVICES),
    ctx: Context | None = None,
    migrate: bool = False,
) -> FastAPI:
    modules = load_services(services)
    for name in ("uvicorn.access", "uvicorn.error", "httpx"):
        if _REDACT not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_REDACT)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        context = ctx or Context.build(settings)
        try:
            await context.check_backends()
            if migrate:
                from shared.migrations import upgrade

                await upgrade(context.db)
            await context.start()
            for module in modules:
                start: Callable[[Context], Awaitable[None]] | None = getattr(module, "on_start", None)
                if start is not None:
                    await start(context)
            app.state.ctx = context  # for tests and embedders; routes get it from the request state
            yield {"ctx": context}
        finally:
            for module in reversed(modules):
                stop: Callable[[Context], Awaitable[None]] | None = getattr(module, "on_stop", None)
                if stop is not None:
                    await stop(context)
            if ctx is None:
                await context.stop()

    app = FastAPI(title="Handshake", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, **_NO_TELEMETRY)
    docs.install(app)
    # Flat: FastAPI keeps included routers nested and walks each level per request; one list of
    # routes costs one scan (PERF §5).
    for router in (_common_router(), *(router for module in modules for router in module.routers)):
        app.router.routes.extend(router.routes)
    RouteIndex.install(app.router)
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Total-Count", "Retry-After"],
        )
    app.add_middleware(BodyLimitMiddleware, max_body=settings.max_body)
    # SPEC §11: a request's backend calls share one deadline (a database that answers nothing costs a
    # request a few seconds and a 503, never more).
    app.add_middleware(RequestDeadline, seconds=settings.backend_timeout * 3)
    app.add_middleware(RequestMetricsMiddleware)
    if settings.trusted_proxies:
        # The client is the TCP peer unless that peer is a proxy the operator named: then the nearest
        # address in X-Forwarded-For that is not one of them (uvicorn's middleware; serve turns off
        # uvicorn's own default, which believes 127.0.0.1).
        trusted = [str(network) for network in settings.trusted_proxies]
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
    return app


def _common_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"])
    async def readyz(ctx: CtxDep) -> JSONResponse:
        checks: dict[str, str] = {"database": "ok" if await ctx.db.ping() else "unreachable"}
        if ctx.redis is not None:
            try:
                await ctx.redis.ping()
                checks["redis"] = "ok"
            except Exception:
                checks["redis"] = "unreachable"
        checks["revocation"] = "ok" if ctx.revocations.confirmed else "unconfirmed"
        # Services add their own, e.g. the device connector's broker (SPEC §2: "broker reachable").
        for name, probe in ctx.readiness.items():
            checks[name] = "ok" if probe() else "unreachable"
        ready = all(value == "ok" for value in checks.values())
        listener = ctx.mqtt_listener
        where = {"mqtt": dict(listener)} if listener else {}  # port and tls_port: where the broker listens
        if ready:
            return JSONResponse({"status": "ready", "checks": checks, **where})
        body = {"error": "service_unavailable", "detail": "A backend is unreachable.", "checks": checks, **where}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @router.get("/metrics", tags=["health"])
    async def metrics(ctx: CtxDep) -> Response:
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/.well-known/jwks.json", tags=["keys"])
    async def jwks(ctx: CtxDep) -> JSONResponse:
        # Served from memory (loaded from the key directory), so it answers while the database is down.
        return JSONResponse(ctx.keys.jwks(), headers={"Cache-Control": "public, max-age=300"})

    return router


def error_response(error: HandshakeError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HandshakeError)
    async def handshake_error(request: Request, exc: HandshakeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            return error_response(InvalidRequestError("The body is not valid JSON."))
        return error_response(ValidationFailedError(describe(errors)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFoundError())
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError())
        if exc.status_code == 413:
            return error_response(PayloadTooLargeError())
        body = {"error": "http_error", "detail": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def backend_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("backend unavailable during %s %s: %r", request.method, request.url.path, exc)
        return error_response(ServiceUnavailableError())

    for error_type in (*BACKEND_ERRORS, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        app.add_exception_handler(error_type, backend_error)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Count requests by method and status class for /metrics (a pure ASGI middleware: cheap)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = scope.get("state", {}).get("ctx") if scope["type"] == "http" else None
        if ctx is None:
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except ClientDisconnect:
            # The client went away while its body was awaited: nobody to answer, and not a fault of
            # ours to log as one. Counted as the client's doing, as nginx's 499 is, unless an answer
            # had started (then it is counted as what it started as).
            if status == 500:
                status = 499
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # any token is a method to h11
            ctx.metrics.child(ctx.metrics.requests, method, f"{status // 100}xx").inc()


class BodyLimitMiddleware:
    """Refuse bodies over the limit (SPEC §11: 64 KiB) before anything parses them, and a NUL in the
    path or the query (no string with one can be stored: PostgreSQL's text cannot hold it)."""

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            await error_response(InvalidRequestError("The path or the query holds a NUL character."))(
                scope, receive, send
            )
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body:
                    await error_response(PayloadTooLargeError())(scope, receive, send)
                    return
                break
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await error_response(PayloadTooLargeError())(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    # An HTTPException, so FastAPI's body parsing re-raises it instead of calling it a parse error.
    def __init__(self) -> None:
        super().__init__(status_code=413)
