"""HTTP routes of /v1/admin/devices: provisioning (admin, manufacturer) and the operators' view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from device_manager import provisioning, registry
from device_manager.schemas import (
    DeviceDisabledOut,
    ProvisionedDeviceOut,
    ProvisionedOut,
    ProvisionIn,
)
from device_manager.store import FleetDevice
from shared.bodies import body_doc, parse_body
from shared.deps import ClientIp, CtxDep, Principal, require_role
from shared.models import Role

router = APIRouter(tags=["device admin"])

Provisioner = Annotated[Principal, require_role(Role.ADMIN, Role.MANUFACTURER)]
Reader = Annotated[Principal, require_role(Role.ADMIN, Role.SUPPORT)]
Admin = Annotated[Principal, require_role(Role.ADMIN)]


@router.post("/v1/admin/devices", status_code=201, response_model=ProvisionedOut, openapi_extra=body_doc(ProvisionIn))
async def provision(request: Request, ctx: CtxDep, caller: Provisioner, ip: ClientIp) -> JSONResponse:
    body = await parse_body(request, ProvisionIn)
    made = await provisioning.provision(
        ctx, model=body.model, count=body.count, uids=body.uids, name=body.name, actor_id=caller.id, ip=ip
    )
    out = ProvisionedOut(devices=[ProvisionedDeviceOut.of(device) for device in made])
    # Secrets and claim codes are shown here only: never cache this answer.
    return JSONResponse(out.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/v1/admin/devices", response_model=list[FleetDevice])
async def list_devices(
    ctx: CtxDep,
    _: Reader,
    response: Response,
    query: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    owner_id: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[FleetDevice]:
    """Every device with its status, newest first. Beside SPEC's filters, `query` matches the start of a
    UID, a model or an owner's username (case aside), each answered by an index."""
    found, total = await registry.list_devices(
        ctx, query=query, online=online, model=model, owner_id=owner_id, limit=limit, offset=offset
    )
    response.headers["X-Total-Count"] = str(total)
    return found  # the store's rows are the wire shape: FastAPI validates and documents the dataclass itself


@router.post("/v1/admin/devices/{uid}/disable", response_model=DeviceDisabledOut)
async def disable(uid: str, ctx: CtxDep, admin: Admin, ip: ClientIp) -> DeviceDisabledOut:
    return DeviceDisabledOut.of(await registry.set_disabled(ctx, uid=uid, disabled=True, actor_id=admin.id, ip=ip))


@router.post("/v1/admin/devices/{uid}/enable", response_model=DeviceDisabledOut)
async def enable(uid: str, ctx: CtxDep, admin: Admin, ip: ClientIp) -> DeviceDisabledOut:
    return DeviceDisabledOut.of(await registry.set_disabled(ctx, uid=uid, disabled=False, actor_id=admin.id, ip=ip))
