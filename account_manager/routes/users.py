"""HTTP routes of /v1/users/me: the caller's own account."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from account_manager import accounts
from account_manager.schemas import EmailIn, PasswordChangeIn, UserOut
from shared.bodies import body_doc, parse_body
from shared.deps import ClientIp, CtxDep, CurrentUser

router = APIRouter(tags=["users"])


@router.get("/v1/users/me", response_model=UserOut)
async def me(ctx: CtxDep, user: CurrentUser) -> dict[str, Any]:
    return accounts.public_user(await accounts.get_user(ctx, user_id=user.id, cached=True))


@router.patch("/v1/users/me", response_model=UserOut, openapi_extra=body_doc(EmailIn))
async def update_me(request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> dict[str, Any]:
    body = await parse_body(request, EmailIn)
    return accounts.public_user(await accounts.update_email(ctx, user_id=user.id, email=body.email, ip=ip))


@router.post("/v1/users/me/password", status_code=204, openapi_extra=body_doc(PasswordChangeIn))
async def change_password(request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> Response:
    body = await parse_body(request, PasswordChangeIn)
    await accounts.change_password(
        ctx,
        user_id=user.id,
        sid=user.sid,
        current_password=body.current_password,
        new_password=body.new_password,
        ip=ip,
    )
    return Response(status_code=204)
