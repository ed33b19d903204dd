"""HTTP routes of the connector: commands relayed to devices, reported and desired state (SPEC §6)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from device_connector import store
from device_connector.connector import CONNECTOR, Connector
from device_connector.schemas import CommandIn
from shared import jsonlimits
from shared.bodies import body_doc, body_fields, parse_body
from shared.context import Context
from shared.deps import CtxDep, CurrentUser, client_ip, current_user, get_ctx
from shared.device_lists import require_role
from shared.errors import ServiceUnavailableError
from shared.models import DeviceRole
from shared.routing import JSON_OBJECT_ANSWER, lean

router = APIRouter(tags=["device connector"])


def connector(ctx: Context) -> Connector:
    found = ctx.services.find(CONNECTOR)
    if found is None:  # a route of the device connector, served without it started: not ready
        raise ServiceUnavailableError("The device connector is not running.")
    return found


async def _require(ctx: Context, uid: str, user_id: str, at_least: DeviceRole) -> str:
    uid = uid.upper()
    mine = await ctx.device_lists.of_user(user_id)  # from memory, kept right like revocations
    if mine is not None:
        role = mine.roles.get(uid)
    else:  # a user with more devices than a process keeps: ask the database about this one
        async with ctx.db.read() as tx:
            role = await store.role_of(tx, uid=uid, user_id=user_id)
    require_role(role, at_least)
    return uid


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@lean(
    router,
    "/v1/devices/{uid}/commands",
    method="POST",
    openapi_extra=body_doc(CommandIn) | JSON_OBJECT_ANSWER,
)
async def send_command(request: Request) -> Response:
    # The hottest route a phone calls, served lean (shared.routing.lean): what were its dependencies
    # are called here, the token first, as FastAPI solved them.
    ctx = await get_ctx(request)
    user = await current_user(request)
    uid = await _require(ctx, request.path_params["uid"], user.id, DeviceRole.CONTROLLER)
    body = await parse_body(request, CommandIn)
    result = await connector(ctx).send_command(
        uid=uid,
        action=body.action,
        params=body.params,
        timeout=body.timeout,
        actor_id=user.id,
        ip=await client_ip(request),
    )
    return Response(orjson.dumps(result), media_type="application/json")


@router.get("/v1/devices/{uid}/state")
async def get_state(uid: str, ctx: CtxDep, user: CurrentUser) -> dict[str, Any]:
    uid = await _require(ctx, uid, user.id, DeviceRole.VIEWER)
    async with ctx.db.read() as tx:
        row = await store.get_state(tx, uid=uid)
    if row is None:
        return {"reported": None, "reported_at": None, "desired": None, "desired_at": None}
    return {
        "reported": _servable(row.reported),
        "reported_at": _iso(row.reported_at),
        "desired": _servable(row.desired),
        "desired_at": _iso(row.desired_at),
    }


def _servable(value: Any) -> Any:
    """A document stored before documents were bounded, too deep to write back, reads as none."""
    return None if value is not None and jsonlimits.problem(value) is not None else value


@router.put("/v1/devices/{uid}/state/desired")
async def put_desired(uid: str, request: Request, ctx: CtxDep, user: CurrentUser) -> dict[str, Any]:
    uid = await _require(ctx, uid, user.id, DeviceRole.CONTROLLER)
    desired = await body_fields(request)
    at = await connector(ctx).set_desired(uid, desired)
    return {"desired": desired, "desired_at": _iso(at)}
