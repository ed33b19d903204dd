"""HTTP routes of /v1/admin for users, events and stats: admin and support read, admin changes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from account_manager import accounts, events
from account_manager.schemas import (
    AdminCreateUserIn,
    AdminUpdateUserIn,
    AdminUserOut,
    EventOut,
    HourlyStatsOut,
)
from shared.bodies import body_doc, parse_body
from shared.deps import ClientIp, CtxDep, Principal, require_role
from shared.models import Role

router = APIRouter(tags=["admin"])

Reader = Annotated[Principal, require_role(Role.ADMIN, Role.SUPPORT)]
Admin = Annotated[Principal, require_role(Role.ADMIN)]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]


@router.get("/v1/admin/users", response_model=list[AdminUserOut])
async def list_users(
    ctx: CtxDep,
    _: Reader,
    response: Response,
    query: Annotated[str | None, Query(max_length=64)] = None,
    role: Role | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[AdminUserOut]:
    rows, total = await accounts.list_users(ctx, query=query, role=role, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [AdminUserOut.of(row) for row in rows]


@router.post("/v1/admin/users", status_code=201, response_model=AdminUserOut, openapi_extra=body_doc(AdminCreateUserIn))
async def create_user(request: Request, ctx: CtxDep, admin: Admin, ip: ClientIp) -> AdminUserOut:
    body = await parse_body(request, AdminCreateUserIn)
    user = await accounts.create_user(
        ctx, username=body.username, password=body.password, role=body.role, email=body.email, actor_id=admin.id, ip=ip
    )
    return AdminUserOut.of(accounts.new_user_listing(user))


@router.patch("/v1/admin/users/{user_id}", response_model=AdminUserOut, openapi_extra=body_doc(AdminUpdateUserIn))
async def update_user(user_id: str, request: Request, ctx: CtxDep, admin: Admin, ip: ClientIp) -> AdminUserOut:
    body = await parse_body(request, AdminUpdateUserIn)
    updated = await accounts.admin_update_user(
        ctx, actor_id=admin.id, user_id=user_id, role=body.role, disabled=body.disabled, ip=ip
    )
    return AdminUserOut.of(updated)


@router.get("/v1/admin/events", response_model=list[EventOut])
async def list_events(
    ctx: CtxDep,
    _: Reader,
    response: Response,
    type: Annotated[str | None, Query(max_length=40)] = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    device_uid: Annotated[str | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[EventOut]:
    found, total = await events.list_events(
        ctx, type=type, user_id=user_id, device_uid=device_uid, since=since, limit=limit, offset=offset
    )
    response.headers["X-Total-Count"] = str(total)
    return [EventOut.of(event) for event in found]


@router.get("/v1/admin/events/stream", response_class=StreamingResponse)
async def stream_events(
    request: Request,
    ctx: CtxDep,
    reader: Reader,
    type: Annotated[str | None, Query(max_length=40)] = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    device_uid: Annotated[str | None, Query(max_length=20)] = None,
) -> StreamingResponse:
    last = request.headers.get("last-event-id", "")
    stream = events.stream_events(
        ctx,
        claims=reader.claims,
        type=type,
        user_id=user_id,
        device_uid=device_uid,
        last_event_id=int(last) if last.isdigit() else None,
    )
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.get("/v1/admin/stats", response_model=accounts.Stats)
async def stats(ctx: CtxDep, _: Reader) -> accounts.Stats:
    return await accounts.stats(ctx)  # the wire shape itself: FastAPI validates and documents the dataclass


@router.get("/v1/admin/stats/hourly", response_model=list[HourlyStatsOut])
async def hourly_stats(ctx: CtxDep, _: Reader, hours: Annotated[int, Query(ge=1, le=168)] = 24) -> list[HourlyStatsOut]:
    """Per UTC hour, oldest first: `{hour, logins, login_failures, device_connections}` (the dashboard's chart)."""
    return [HourlyStatsOut.of(counts) for counts in await accounts.hourly_stats(ctx, hours=hours)]
