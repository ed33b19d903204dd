"""EMQX 5 HTTP authentication and authorization hooks (SPEC §6), and what every broker's hooks share.
Same rules as the embedded broker. They always answer 200 {"result": "allow"|"deny"}; an allowed
CONNECT also carries `expire_at` and the connection's `acl`, so EMQX enforces expiry and topics too."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from device_connector.acl import Action, Grants, acl_rules, may_publish, may_subscribe
from device_connector.clustered import Admissions
from device_connector.connector import CONNECTOR
from device_connector.gate import Admission, Gate
from device_connector.port import BrokerEvents, RefusedError
from shared.bodies import body_fields
from shared.context import Context
from shared.deps import CtxDep
from shared.errors import HandshakeError, InvalidRequestError, NotFoundError, UnauthorizedHookError
from shared.registry import Key

router = APIRouter(tags=["broker hooks"])
GRANTS_TTL = 5.0  # role changes reach a clustered broker's ACL checks within this many seconds

DENY = {"result": "deny"}


def secret_ok(ctx: Context, offered: str) -> bool:
    secret = ctx.settings.mqtt_hook_secret
    if not secret:
        return False  # hooks are off until a secret is configured
    return hmac.compare_digest(offered.encode(), secret.encode())


def header_secret(request: Request) -> str:
    offered = request.headers.get("x-hook-secret") or ""
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        offered = offered or authorization[7:].strip()
    return offered


def text(body: dict[str, object], name: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) else ""


async def body_of(request: Request) -> dict[str, object] | None:
    try:
        return await body_fields(request)
    except HandshakeError:
        return None


class GrantsCache:
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


HOOK_GRANTS = Key[GrantsCache]("hook_grants")


def grants_cache(ctx: Context) -> GrantsCache:
    return ctx.services.get(HOOK_GRANTS, GrantsCache)


async def admit(ctx: Context, *, client_id: str, username: str, password: str, ip: str | None) -> Admission | None:
    """A CONNECT asked of a hook: the gate's answer, remembered for the connection's later checks."""
    try:
        admission = await Gate(ctx).admit(client_id=client_id, username=username, password=password)
    except RefusedError as refusal:
        events: BrokerEvents | None = ctx.services.find(CONNECTOR)
        if events is not None:
            events.refused(client_id=client_id, username=username, ip=ip, reason=refusal.reason)
        return None
    try:
        await Admissions.of(ctx).put(client_id, username, admission)
    except Exception:
        return None  # a connection no replica could keep honest is not let in
    grants_cache(ctx).put(client_id, username, admission.grants)
    return admission


async def grants_for(ctx: Context, client_id: str, username: str) -> Grants | None:
    """The connection's grants: from a recent CONNECT here, else rebuilt from the database (another
    replica answered the CONNECT, or it is older than GRANTS_TTL). None while revocation state cannot
    be confirmed: a hook never allows unchecked (SPEC §11)."""
    if not ctx.revocations.confirmed:
        return None
    grants = grants_cache(ctx).get(client_id, username)
    if grants is None:
        grants = await Gate(ctx).grants_of(client_id, username)
        if grants is not None:
            grants_cache(ctx).put(client_id, username, grants)
    return grants


@router.post("/v1/mqtt/auth")
async def authenticate(request: Request, ctx: CtxDep) -> JSONResponse:
    body = await body_of(request)
    if body is None or not secret_ok(ctx, header_secret(request)):
        return JSONResponse(DENY)
    client_id, username = text(body, "clientid"), text(body, "username")
    ip = ctx.settings.client_address(text(body, "peerhost"))
    admission = await admit(ctx, client_id=client_id, username=username, password=text(body, "password"), ip=ip)
    if admission is None:
        return JSONResponse(DENY)
    answer: dict[str, Any] = {
        "result": "allow",
        "is_superuser": False,
        "expire_at": admission.claims.exp,
        "acl": acl_rules(admission.grants),
    }
    return JSONResponse(answer)


@router.post("/v1/mqtt/acl")
async def authorize(request: Request, ctx: CtxDep) -> JSONResponse:
    body = await body_of(request)
    if body is None or not secret_ok(ctx, header_secret(request)):
        return JSONResponse(DENY)
    client_id, username, topic = text(body, "clientid"), text(body, "username"), text(body, "topic")
    action = text(body, "action").lower()
    grants = await grants_for(ctx, client_id, username)
    if grants is None:
        return JSONResponse(DENY)
    if action == Action.PUBLISH:
        allowed = may_publish(grants, topic)
    elif action == Action.SUBSCRIBE:
        allowed = may_subscribe(grants, topic)
    else:
        allowed = False
    return JSONResponse({"result": "allow" if allowed else "deny"})


@router.post("/v1/mqtt/emqx/events")
async def emqx_events(request: Request, ctx: CtxDep) -> JSONResponse:
    """EMQX's rule engine posting `client.connected` / `client.disconnected` (SPEC §6): presence."""
    from device_connector.emqx import EmqxBroker

    body = await body_of(request)
    if not secret_ok(ctx, header_secret(request)):
        raise UnauthorizedHookError()
    connector = ctx.services.find(CONNECTOR)
    broker = connector.broker if connector is not None else None
    if not isinstance(broker, EmqxBroker):
        raise NotFoundError("This connector does not run with HANDSHAKE_MQTT_BROKER=emqx.")
    if body is None or not await broker.webhook(body):
        raise InvalidRequestError("Expected an EMQX client.connected or client.disconnected event.")
    return JSONResponse({"result": "ok"})
