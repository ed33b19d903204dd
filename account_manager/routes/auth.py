"""HTTP routes of /v1/auth and the discovery document (SPEC §4). Thin: parse, call, answer."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from account_manager import accounts, authorization, oauth, sessions
from account_manager.clients import GrantType
from account_manager.routes.oauth import form_items, json_outcome
from account_manager.schemas import (
    ExchangedOut,
    ExchangeIn,
    IntrospectionOut,
    LoginIn,
    MfaLoginIn,
    RefreshIn,
    RegisteredOut,
    RegisterIn,
    SessionOut,
    TokenIn,
    TokenPairOut,
)
from shared.bodies import body_doc, body_fields, parse_body, validate_body
from shared.deps import ClientIp, CtxDep, CurrentUser, EnrollingUser
from shared.errors import (
    AccountDisabledError,
    InvalidCredentialsError,
    InvalidGrantError,
    InvalidRequestError,
    MfaRequiredError,
    RefreshTokenReusedError,
    TokenEndpointGrantError,
    TokenEndpointMfaRequiredError,
    UnsupportedGrantTypeError,
    ValidationFailedError,
)

router = APIRouter(tags=["auth"])
NO_STORE = {"Cache-Control": "no-store"}  # RFC 6749 §5.1


def _user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent")


def _pair(pair: sessions.TokenPair) -> JSONResponse:
    return JSONResponse(pair.to_json(), headers=NO_STORE)


@router.post("/v1/auth/register", status_code=201, response_model=RegisteredOut, openapi_extra=body_doc(RegisterIn))
async def register(request: Request, ctx: CtxDep, ip: ClientIp) -> RegisteredOut:
    body = await parse_body(request, RegisterIn)
    user = await accounts.register(ctx, username=body.username, password=body.password, email=body.email, ip=ip)
    return RegisteredOut(id=user.id, username=user.username, role=user.role)


@router.post("/v1/auth/login", response_model=TokenPairOut, openapi_extra=body_doc(LoginIn))
async def login(request: Request, ctx: CtxDep, ip: ClientIp) -> JSONResponse:
    body = await parse_body(request, LoginIn)
    pair = await sessions.login(
        ctx, username=body.username, password=body.password, ip=ip, user_agent=_user_agent(request)
    )
    return _pair(pair)


@router.post("/v1/auth/mfa", response_model=TokenPairOut, openapi_extra=body_doc(MfaLoginIn))
async def login_with_factor(request: Request, ctx: CtxDep, ip: ClientIp) -> JSONResponse:
    """The second step of a login (SPEC §12): the `mfa_token` of a 401 `mfa_required` and a code of
    the authenticator app or a recovery code."""
    body = await parse_body(request, MfaLoginIn)
    pair = await sessions.login_with_factor(
        ctx,
        mfa_token=body.mfa_token,
        code=body.code,
        recovery_code=body.recovery_code,
        ip=ip,
        user_agent=_user_agent(request),
    )
    return _pair(pair)


@router.post("/v1/auth/token", response_model=TokenPairOut)
async def token(request: Request, ctx: CtxDep, ip: ClientIp) -> JSONResponse:
    """The OAuth 2 token endpoint (RFC 6749 §4.3 and §6; §4.1.3 with PKCE, RFC 7636; RFC 8628 §3.4),
    with its error codes (§5.2). Every grant ends in the same token pair and session."""
    data = await body_fields(request)
    grant = data.get("grant_type")
    if grant in (GrantType.AUTHORIZATION_CODE, GrantType.DEVICE_CODE):
        incoming = authorization.Incoming("POST", request.headers, form_items(data), ip, _user_agent(request))
        return json_outcome(await authorization.token(ctx, incoming))
    try:
        if grant == "password":
            body = validate_body(LoginIn, data)
            pair = await sessions.login(
                ctx, username=body.username, password=body.password, ip=ip, user_agent=_user_agent(request)
            )
        elif grant == "refresh_token":
            refresh_body = validate_body(RefreshIn, data)
            pair = await sessions.refresh(
                ctx, refresh_token=refresh_body.refresh_token, ip=ip, user_agent=_user_agent(request)
            )
        elif grant is None:
            raise InvalidRequestError("grant_type is required.")
        else:
            raise UnsupportedGrantTypeError()
    except MfaRequiredError as exc:
        raise TokenEndpointMfaRequiredError(exc.mfa_token) from None
    except (InvalidCredentialsError, InvalidGrantError, RefreshTokenReusedError, AccountDisabledError) as exc:
        raise TokenEndpointGrantError(exc.detail) from None
    except ValidationFailedError as exc:
        raise InvalidRequestError(exc.detail) from None
    return _pair(pair)


@router.post("/v1/auth/refresh", response_model=TokenPairOut, openapi_extra=body_doc(RefreshIn))
async def refresh(request: Request, ctx: CtxDep, ip: ClientIp) -> JSONResponse:
    body = await parse_body(request, RefreshIn)
    pair = await sessions.refresh(ctx, refresh_token=body.refresh_token, ip=ip, user_agent=_user_agent(request))
    return _pair(pair)


@router.post("/v1/auth/logout", status_code=204)
async def logout(ctx: CtxDep, user: EnrollingUser, ip: ClientIp) -> Response:
    await sessions.logout(ctx, user_id=user.id, sid=user.sid, ip=ip)
    return Response(status_code=204)


@router.post("/v1/auth/logout-all", status_code=204)
async def logout_all(ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> Response:
    await sessions.logout_all(ctx, user_id=user.id, ip=ip)
    return Response(status_code=204)


@router.get("/v1/auth/sessions", response_model=list[SessionOut])
async def list_sessions(ctx: CtxDep, user: CurrentUser, response: Response) -> list[SessionOut]:
    found = await sessions.list_sessions(ctx, user_id=user.id)
    response.headers["X-Total-Count"] = str(len(found))
    return [
        SessionOut(
            id=row.id,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            ip=row.ip,
            user_agent=row.user_agent,
            current=row.id == user.sid,
        )
        for row in found
    ]


@router.delete("/v1/auth/sessions/{session_id}", status_code=204)
async def end_session(session_id: str, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> Response:
    await sessions.revoke_session(ctx, user_id=user.id, sid=session_id, ip=ip)
    return Response(status_code=204)


@router.post(
    "/v1/auth/introspect",
    response_model=IntrospectionOut,
    response_model_exclude_none=True,
    openapi_extra=body_doc(TokenIn),
)
async def introspect(request: Request, ctx: CtxDep, ip: ClientIp) -> JSONResponse:
    await oauth.rate_limit_introspection(ctx, ip)
    body = await parse_body(request, TokenIn)
    found = await oauth.introspect(ctx, body.token)
    if found is None:
        out = IntrospectionOut(active=False)
    else:
        out = IntrospectionOut(
            active=True,
            sub=found.sub,
            exp=found.exp,
            iat=found.iat,
            aud=found.aud,
            iss=found.iss,
            jti=found.jti,
            token_type="Bearer",
            token_use=found.token_use,
            role=found.role,
            sid=found.sid,
        )
    return JSONResponse(out.model_dump(mode="json", exclude_none=True), headers=NO_STORE)


@router.post("/v1/auth/revoke", openapi_extra=body_doc(TokenIn))
async def revoke(request: Request, ctx: CtxDep, ip: ClientIp) -> Response:
    body = await parse_body(request, TokenIn)
    await oauth.revoke(ctx, body.token, ip=ip)
    return Response(status_code=200)


@router.post("/v1/auth/exchange", response_model=ExchangedOut, openapi_extra=body_doc(ExchangeIn))
async def exchange(request: Request, ctx: CtxDep, user: CurrentUser, ip: ClientIp) -> JSONResponse:
    body = await parse_body(request, ExchangeIn)
    issued = await oauth.exchange(ctx, user_id=user.id, sid=user.sid, audience=body.audience, nonce=body.nonce, ip=ip)
    out = ExchangedOut(access_token=issued.access_token, expires_in=issued.expires_in)
    return JSONResponse(out.model_dump(mode="json"), headers=NO_STORE)


@router.get("/.well-known/openid-configuration", tags=["keys"])
@router.get("/.well-known/oauth-authorization-server", tags=["keys"])  # RFC 8414: the same document
async def discovery(ctx: CtxDep) -> JSONResponse:
    issuer = ctx.settings.issuer.rstrip("/")
    document: dict[str, object] = {
        "issuer": ctx.settings.issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "token_endpoint": f"{issuer}/v1/auth/token",
        "introspection_endpoint": f"{issuer}/v1/auth/introspect",
        "revocation_endpoint": f"{issuer}/v1/auth/revoke",
        "authorization_endpoint": f"{issuer}/v1/oauth/authorize",
        "device_authorization_endpoint": f"{issuer}/v1/oauth/device_authorization",
        "grant_types_supported": [*(str(grant) for grant in GrantType), "password"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": [ctx.settings.jwt_alg],
        "subject_types_supported": ["public"],
    }
    listener = ctx.mqtt_listener
    if listener:  # an extension (RFC 8414 §2 allows them): where this deployment's MQTT broker listens
        for key in ("port", "tls_port"):
            if key in listener:
                document[f"mqtt_{key}"] = listener[key]
    return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})
