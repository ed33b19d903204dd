"""FastAPI dependencies that every service, and any third-party service, protects routes with.
Our apps put the Context in the lifespan state as `ctx`; a third-party app puts only an
Authenticator there as `auth` (see examples/partner_service.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from shared.auth import Authenticator
from shared.context import Context
from shared.errors import ForbiddenError, InvalidTokenError, MissingTokenError
from shared.models import Role
from shared.tokens import Claims, TokenKind

_SCHEMES = ("bearer", "jwt")  # `JWT <token>` for clients written for django-rest-framework-jwt


async def get_ctx(request: Request) -> Context:
    ctx: Context = request.state.ctx
    return ctx


# Async on purpose, like every dependency here: FastAPI runs a plain `def` one in its thread pool,
# which costs more than the work itself on every request (PERF §5).
CtxDep = Annotated[Context, Depends(get_ctx)]


async def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


ClientIp = Annotated[str | None, Depends(client_ip)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise MissingTokenError()
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() not in _SCHEMES or not token:
        raise InvalidTokenError()
    return token


def _authenticator(request: Request) -> Authenticator:
    ctx = getattr(request.state, "ctx", None)
    auth: Authenticator = ctx.auth if ctx is not None else request.state.auth
    return auth


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the verified token says."""

    claims: Claims

    @property
    def id(self) -> str:
        return self.claims.sub

    @property
    def sid(self) -> str:
        assert self.claims.sid is not None
        return self.claims.sid

    @property
    def role(self) -> str | None:
        return self.claims.role


async def current_user(request: Request) -> Principal:
    # An async dependency: a sync one would be sent to the thread pool on every request (PERF §5).
    claims = await _authenticator(request).authenticate(bearer_token(request), TokenKind.ACCESS)
    return Principal(claims)


async def enrolling_user(request: Request) -> Principal:
    """The caller, also when their token is good only for enrolling a second factor (SPEC §12): for
    the enrolment routes, GET /v1/users/me and logout."""
    claims = await _authenticator(request).authenticate(bearer_token(request), TokenKind.ACCESS, enrolment=True)
    return Principal(claims)


async def current_device(request: Request) -> Principal:
    claims = await _authenticator(request).authenticate(bearer_token(request), TokenKind.DEVICE)
    return Principal(claims)


def partner_token(audience: str) -> Any:
    """For a partner service: accept exchanged tokens minted for `audience` only."""

    async def dependency(request: Request) -> Principal:
        token = bearer_token(request)
        claims = await _authenticator(request).authenticate(token, TokenKind.EXCHANGED, audience=audience)
        return Principal(claims)

    return Depends(dependency)


CurrentUser = Annotated[Principal, Depends(current_user)]
EnrollingUser = Annotated[Principal, Depends(enrolling_user)]
CurrentDevice = Annotated[Principal, Depends(current_device)]


def require_role(*roles: Role) -> Any:
    """The caller's role as the token carries it. Services that must see a demotion at once
    re-check the stored role (the account manager's admin routes do)."""
    allowed = frozenset(roles)

    async def dependency(user: CurrentUser) -> Principal:
        if user.role not in allowed:
            raise ForbiddenError()
        return user

    return Depends(dependency)
