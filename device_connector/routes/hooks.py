"""EMQX 5 HTTP authentication and authorization hooks (SPEC §6), for an external broker. Same rules as
the embedded broker. They always answer 200 {"result": "allow"|"deny"}; an allowed CONNECT also
carries `expire_at` and the connection's `acl`, so the broker enforces expiry and topics itself."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from device_connector import store
from device_connector.acl import Action, Grants, acl_rules, may_publish, may_subscribe
from device_connector.broker.gate import DEVICE_ID, Gate
from device_connector.broker.server import Refused
from shared.bodies import raw_body
from shared.context import Context
from shared.deps import CtxDep
from shared.errors import HandshakeError
from shared.models import Role
from shared.tokens import Claims, TokenKind

router = APIRouter(tags=["broker hooks"])
GRANTS_TTL = 5.0  # role changes reach an external broker's ACL checks within this many seconds

DENY = {"result": "deny"}


def _secret_ok(ctx: Context, request: Request) -> bool:
    secret = ctx.settings.mqtt_hook_secret
    if not secret:
        return False  # hooks are off until a secret is configured
    offered = request.headers.get("x-hook-secret") or ""
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        offered = offered or authorization[7:].strip()
    return hmac.compare_digest(offered.encode(), secret.encode())


def _text(body: dict[str, object], name: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) else ""


async def _body(request: Request) -> dict[str, object] | None:
    try:
        return await raw_body(request)
    except HandshakeError:
        return None


class _GrantsCache:
    """Grants by client id, from the last allowed CONNECT, re-read from the database when stale."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, str, Grants]] = {}

    def get(self, client_id: str, username: str) -> Grants | None:
        found = self.entries.get(client_id)
        if found is None or found[1] != username or time.monotonic() - found[0] > GRANTS_TTL:
            return None
        return found[2]

    def put(self, client_id: str, username: str, grants: Grants) -> None:
        if len(self.entries) > 100_000:
            self.entries.clear()
        self.entries[client_id] = (time.monotonic(), username, grants)


def _cache(ctx: Context) -> _GrantsCache:
    cache = ctx.extras.get("hook_grants")
    if cache is None:
        cache = ctx.extras["hook_grants"] = _GrantsCache()
    assert isinstance(cache, _GrantsCache)
    return cache


@router.post("/v1/mqtt/auth")
async def authenticate(request: Request, ctx: CtxDep) -> JSONResponse:
    body = await _body(request)
    if body is None or not _secret_ok(ctx, request):
        return JSONResponse(DENY)
    client_id, username = _text(body, "clientid"), _text(body, "username")
    try:
        admission = await Gate(ctx).admit(client_id=client_id, username=username, password=_text(body, "password"))
    except Refused:
        return JSONResponse(DENY)
    _cache(ctx).put(client_id, username, admission.grants)
    answer: dict[str, Any] = {
        "result": "allow",
        "is_superuser": False,
        "expire_at": admission.claims.exp,
        "acl": acl_rules(admission.grants),
    }
    return JSONResponse(answer)


@router.post("/v1/mqtt/acl")
async def authorize(request: Request, ctx: CtxDep) -> JSONResponse:
    body = await _body(request)
    if body is None or not _secret_ok(ctx, request):
        return JSONResponse(DENY)
    client_id, username, topic = _text(body, "clientid"), _text(body, "username"), _text(body, "topic")
    action = _text(body, "action").lower()
    grants = _cache(ctx).get(client_id, username) or await _grants_for(ctx, client_id, username)
    if grants is None:
        return JSONResponse(DENY)
    if action == Action.PUBLISH:
        allowed = may_publish(grants, topic)
    elif action == Action.SUBSCRIBE:
        allowed = may_subscribe(grants, topic)
    else:
        allowed = False
    return JSONResponse({"result": "allow" if allowed else "deny"})


async def _grants_for(ctx: Context, client_id: str, username: str) -> Grants | None:
    """No recent CONNECT here (another replica answered it, or it is stale): rebuild from the database."""
    device = bool(DEVICE_ID.fullmatch(username))
    if device and client_id != username:
        return None
    claims = Claims(
        kind=TokenKind.DEVICE if device else TokenKind.ACCESS,
        sub=username,
        exp=0,
        iat=0,
        jti="",
        kid="",
        aud="",
        role=await _role_of(ctx, username) if not device else None,
    )
    try:
        grants = await Gate(ctx).grants(claims)
    except Refused:
        return None
    _cache(ctx).put(client_id, username, grants)
    return grants


async def _role_of(ctx: Context, user_id: str) -> str | None:
    async with ctx.db.read() as tx:
        role = await store.user_role(tx, user_id=user_id)
    return role if role == Role.ADMIN else None
