"""HTTP routes of /v1/devices: what users and devices do (SPEC §5). Thin: parse, call, answer."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from device_manager import binding, provisioning, sharing
from device_manager.schemas import (
    BindIn,
    BoundOut,
    DeviceCredentialsIn,
    DeviceOut,
    DeviceSummaryOut,
    DeviceTokenOut,
    PairedOut,
    PairIn,
    PairingTokenOut,
    RenameIn,
    SharedOut,
    ShareIn,
    ShareOut,
    TransferIn,
    TransferOut,
)
from device_manager.sharing import SeenDevice
from shared.bodies import body_doc, parse_body
from shared.deps import ClientIp, CtxDep, CurrentUser
from shared.models import DeviceRole

router = APIRouter(tags=["devices"])
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]
NO_STORE = {"Cache-Control": "no-store"}  # a token: kept by no cache


def _device_out(seen: SeenDevice) -> DeviceOut:
    device = seen.device
    return DeviceOut(
        uid=device.uid,
        name=device.name,
        model=device.model,
        role=seen.role,
        owner_id=device.owner_id,
        online=device.online,
        last_seen=device.last_seen,
        connected_at=device.connected_at,
        ip=device.ip,
        region=device.region,
    )


@router.post("/v1/devices/token", response_model=DeviceTokenOut, openapi_extra=body_doc(DeviceCredentialsIn))
async def device_token(request: Request, ctx: CtxDep, ip: ClientIp) -> JSONResponse:
    body = await parse_body(request, DeviceCredentialsIn)
    issued = await provisioning.issue_token(ctx, uid=body.uid, secret=body.secret, ip=ip)
    out = DeviceTokenOut(access_token=issued.access_token, expires_in=issued.expires_in)
    return JSONResponse(out.model_dump(mode="json"), headers=NO_STORE)


@router.post("/v1/devices/bind", status_code=201, response_model=BoundOut, openapi_extra=body_doc(BindIn))
async def bind(request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> BoundOut:
    body = await parse_body(request, BindIn)
    return BoundOut.of(await binding.bind(ctx, uid=body.uid, claim_code=body.claim_code, user_id=user.id, ip=ip))


@router.post("/v1/devices/pairing-tokens", status_code=201, response_model=PairingTokenOut)
async def pairing_token(ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> JSONResponse:
    issued = await binding.new_pairing_token(ctx, user_id=user.id, ip=ip)
    out = PairingTokenOut(pairing_token=issued.token, expires_in=issued.expires_in)
    return JSONResponse(out.model_dump(mode="json"), status_code=201, headers=NO_STORE)


@router.post("/v1/devices/pair", status_code=201, response_model=PairedOut, openapi_extra=body_doc(PairIn))
async def pair(request: Request, ctx: CtxDep, ip: ClientIp) -> PairedOut:
    body = await parse_body(request, PairIn)
    paired = await binding.pair(ctx, uid=body.uid, secret=body.secret, pairing_token=body.pairing_token, ip=ip)
    return PairedOut.of(paired)


@router.post("/v1/devices/reset", status_code=204, openapi_extra=body_doc(DeviceCredentialsIn))
async def reset(request: Request, ctx: CtxDep, ip: ClientIp) -> Response:
    body = await parse_body(request, DeviceCredentialsIn)
    await binding.reset(ctx, uid=body.uid, secret=body.secret, ip=ip)
    return Response(status_code=204)


@router.get("/v1/devices", response_model=None, responses={200: {"model": list[DeviceSummaryOut]}})
async def list_devices(ctx: CtxDep, user: CurrentUser, limit: Limit = 50, offset: Offset = 0) -> Response:
    found, total = await sharing.list_devices(ctx, user_id=user.id, limit=limit, offset=offset)
    # The entries (dataclasses of the fields of DeviceSummaryOut) written by orjson straight away:
    # FastAPI's validation and encoding of a return value cost more than the query for a list this shape.
    return Response(orjson.dumps(found), media_type="application/json", headers={"X-Total-Count": str(total)})


@router.get("/v1/devices/{uid}", response_model=DeviceOut)
async def get_device(uid: str, ctx: CtxDep, user: CurrentUser) -> DeviceOut:
    return _device_out(await sharing.get_device(ctx, uid=uid, user_id=user.id))


@router.patch("/v1/devices/{uid}", response_model=DeviceOut, openapi_extra=body_doc(RenameIn))
async def rename(uid: str, request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> DeviceOut:
    body = await parse_body(request, RenameIn)
    return _device_out(await sharing.rename(ctx, uid=uid, user_id=user.id, name=body.name, ip=ip))


@router.delete("/v1/devices/{uid}/binding", status_code=204)
async def unbind(uid: str, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> Response:
    await binding.unbind(ctx, uid=uid, user_id=user.id, ip=ip)
    return Response(status_code=204)


@router.post("/v1/devices/{uid}/shares", status_code=201, response_model=SharedOut, openapi_extra=body_doc(ShareIn))
async def share(uid: str, request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> SharedOut:
    body = await parse_body(request, ShareIn)
    role = DeviceRole(body.role)
    return SharedOut.of(await sharing.share(ctx, uid=uid, user_id=user.id, username=body.username, role=role, ip=ip))


@router.get("/v1/devices/{uid}/shares", response_model=list[ShareOut])
async def list_shares(uid: str, ctx: CtxDep, user: CurrentUser, response: Response) -> list[ShareOut]:
    found = await sharing.list_shares(ctx, uid=uid, user_id=user.id)
    response.headers["X-Total-Count"] = str(len(found))
    return [ShareOut.of(row) for row in found]


@router.delete("/v1/devices/{uid}/shares/{user_id}", status_code=204)
async def unshare(uid: str, user_id: str, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> Response:
    await sharing.unshare(ctx, uid=uid, user_id=user.id, sharee_id=user_id, ip=ip)
    return Response(status_code=204)


@router.post("/v1/devices/{uid}/transfer", response_model=TransferOut, openapi_extra=body_doc(TransferIn))
async def transfer(uid: str, request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> TransferOut:
    body = await parse_body(request, TransferIn)
    return TransferOut.of(await sharing.transfer(ctx, uid=uid, user_id=user.id, username=body.username, ip=ip))
