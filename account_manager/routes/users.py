"""HTTP routes of /v1/users/me: the caller's own account."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from account_manager import accounts, mfa
from account_manager.schemas import (
    EmailIn,
    MfaCodeIn,
    MfaDisableIn,
    PasswordChangeIn,
    RecoveryCodesOut,
    TotpEnrolmentOut,
    UserOut,
)
from shared.bodies import body_doc, parse_body
from shared.deps import ClientIp, CtxDep, CurrentUser, EnrollingUser

NO_STORE = {"Cache-Control": "no-store"}  # a secret or recovery codes: shown once, kept by no cache

router = APIRouter(tags=["users"])


@router.get("/v1/users/me", response_model=UserOut)
async def me(ctx: CtxDep, user: EnrollingUser) -> Response:
    return UserOut.of(await accounts.get_user(ctx, user_id=user.id, cached=True)).response()


@router.patch("/v1/users/me", response_model=UserOut, openapi_extra=body_doc(EmailIn))
async def update_me(request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> UserOut:
    body = await parse_body(request, EmailIn)
    return UserOut.of(await accounts.update_email(ctx, user_id=user.id, email=body.email, ip=ip))


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


# --- the second factor (SPEC §12); a user who must enrol one can reach these with a token of the
# password alone ---------------------------------------------------------------------------------


@router.post("/v1/users/me/mfa/totp", status_code=201, response_model=TotpEnrolmentOut)
async def enrol_totp(ctx: CtxDep, user: EnrollingUser, response: Response) -> TotpEnrolmentOut:
    secret, uri = await mfa.enrol(ctx, user_id=user.id)
    response.headers.update(NO_STORE)
    return TotpEnrolmentOut(secret=secret, otpauth_uri=uri)


@router.post("/v1/users/me/mfa/totp/confirm", response_model=RecoveryCodesOut, openapi_extra=body_doc(MfaCodeIn))
async def confirm_totp(
    request: Request, ctx: CtxDep, user: EnrollingUser, ip: ClientIp, response: Response
) -> RecoveryCodesOut:
    body = await parse_body(request, MfaCodeIn)
    codes = await mfa.confirm(ctx, user_id=user.id, sid=user.sid, code=body.code, ip=ip)
    response.headers.update(NO_STORE)
    return RecoveryCodesOut(recovery_codes=codes)


@router.delete("/v1/users/me/mfa", status_code=204, openapi_extra=body_doc(MfaDisableIn))
async def disable_mfa(request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> Response:
    body = await parse_body(request, MfaDisableIn)
    await mfa.disable(
        ctx,
        user_id=user.id,
        sid=user.sid,
        password=body.password,
        code=body.code,
        recovery_code=body.recovery_code,
        ip=ip,
    )
    return Response(status_code=204)
