"""HTTP routes of /v1/admin/clients: registered OAuth clients. Admin and support read, admin changes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from account_manager import clients
from account_manager.oauth_store import ClientRow
from account_manager.routes.admin import Admin, Limit, Offset, Reader
from account_manager.schemas import ClientIn, ClientOut
from shared.bodies import body_doc, parse_body
from shared.deps import ClientIp, CtxDep

router = APIRouter(tags=["admin"])


def _out(client: ClientRow, secret: str | None = None) -> ClientOut:
    return ClientOut(
        client_id=client.id,
        name=client.name,
        type=str(clients.type_of(client)),
        redirect_uris=client.redirect_uris,
        grant_types=client.grant_types,
        created_at=client.created_at,
        client_secret=secret,
    )


@router.post("/v1/admin/clients", status_code=201, response_model=ClientOut, openapi_extra=body_doc(ClientIn))
async def create_client(request: Request, ctx: CtxDep, admin: Admin, ip: ClientIp) -> JSONResponse:
    """A public client (`type: "public"`, the default: a mobile app or a hub, PKCE required) or a
    confidential one (its `client_secret` is in this answer only, and stored hashed)."""
    body = await parse_body(request, ClientIn)
    made = await clients.create_client(
        ctx,
        name=body.name,
        redirect_uris=body.redirect_uris,
        grant_types=body.grant_types,
        client_type=clients.ClientType(body.type),
        actor_id=admin.id,
        ip=ip,
    )
    out = _out(made.client, made.secret)
    return JSONResponse(
        out.model_dump(mode="json", exclude_none=True), status_code=201, headers={"Cache-Control": "no-store"}
    )


@router.get("/v1/admin/clients", response_model=list[ClientOut], response_model_exclude_none=True)
async def list_clients(
    ctx: CtxDep, _: Reader, response: Response, limit: Limit = 50, offset: Offset = 0
) -> list[ClientOut]:
    found, total = await clients.list_clients(ctx, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    return [_out(client) for client in found]


@router.get("/v1/admin/clients/{client_id}", response_model=ClientOut, response_model_exclude_none=True)
async def get_client(client_id: str, ctx: CtxDep, _: Reader) -> ClientOut:
    return _out(await clients.get_client(ctx, client_id))


@router.delete("/v1/admin/clients/{client_id}", status_code=204)
async def delete_client(client_id: str, ctx: CtxDep, admin: Admin, ip: ClientIp) -> Response:
    """The client goes, and every session issued to it ends at once."""
    await clients.delete_client(ctx, client_id=client_id, actor_id=admin.id, ip=ip)
    return Response(status_code=204)
