"""HTTP routes of the authorization endpoint and its hosted login page, the device authorization
endpoint, and the hosted pages' style sheet (SPEC §12). Thin: parse, call, answer."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from account_manager import authorization, device_codes, hosted, pages, redirect_uris
from account_manager.authorization import Incoming, LoginNeeded, Outcome
from account_manager.oauth_store import HostedLogin
from account_manager.routes.dashboard import SECURITY_HEADERS
from account_manager.schemas import DeviceAuthorizationIn
from shared.bodies import body_doc, body_fields
from shared.deps import ClientIp, CtxDep
from shared.errors import (
    AccountDisabledError,
    HandshakeError,
    InvalidCodeError,
    InvalidCredentialsError,
    InvalidMfaTokenError,
    InvalidRequestError,
    NotFoundError,
    TooManyAttemptsError,
    ValidationFailedError,
)

router = APIRouter(tags=["oauth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1
FORM_COOKIE_AGE = 3600
REFUSED = "This form did not come from this site, or it is too old. Go back, reload the page and try again."


def user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent")


def json_outcome(outcome: Outcome) -> JSONResponse:
    headers = {k: v for k, v in outcome.headers.items() if k.lower() != "content-type"}
    return JSONResponse(outcome.body, status_code=outcome.status, headers={**headers, **NO_STORE})


def form_items(data: dict[str, object]) -> list[tuple[str, str]]:
    """A token-endpoint body as Authlib reads it: text values only (a JSON number is no client id)."""
    if any(not isinstance(value, str) for value in data.values()):
        raise InvalidRequestError("Every parameter must be a string.")
    return [(key, str(value)) for key, value in data.items()]


async def current(ctx: Any, request: Request) -> tuple[str | None, HostedLogin | None]:
    token = pages.read_cookie(request, pages.LOGIN_COOKIE)
    return token, await hosted.current_login(ctx, token)


def login_page(
    request: Request,
    *,
    continue_to: str,
    client_name: str | None,
    form_target: str | None,
    error: str | None = None,
    username: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    return _form_page(
        request,
        "login.html",
        status=status,
        headers=headers,
        form_target=form_target,
        title="Sign in",
        client_name=client_name,
        error=error,
        continue_to=continue_to,
        username=username,
    )


def _form_page(
    request: Request, template: str, *, status: int, headers: dict[str, str] | None, **fields: Any
) -> Response:
    """A hosted form, with the anti-forgery token derived from the form cookie (set, or kept)."""
    secret = pages.read_cookie(request, pages.FORM_COOKIE) or secrets.token_urlsafe(32)
    response = pages.render(template, status=status, csrf=hosted.form_token(secret), **fields)
    response.headers.update(headers or {})
    pages.set_cookie(response, request, pages.FORM_COOKIE, secret, max_age=FORM_COOKIE_AGE, lax=False)
    return response


async def read_form(request: Request) -> dict[str, str] | None:
    """A hosted page's form post; None when it is not one we can read (a 400 page, not JSON)."""
    try:
        data = await body_fields(request)
    except HandshakeError:
        return None
    return {key: value for key, value in data.items() if isinstance(value, str) and len(value) <= 8192}


@router.get("/v1/oauth/authorize")
async def authorize(request: Request, ctx: CtxDep, ip: ClientIp) -> Response:
    """The authorization endpoint (RFC 6749 §4.1.1, PKCE per RFC 7636): `response_type=code`,
    `client_id`, `redirect_uri`, `state`, `code_challenge`, `code_challenge_method=S256`. A signed-in
    browser is sent back to the redirect URI with `code` and `state`; another gets the login page."""
    _, login = await current(ctx, request)
    incoming = Incoming("GET", request.headers, request.query_params.multi_items(), ip, user_agent(request), login)
    result = await authorization.authorize(ctx, incoming)
    if isinstance(result, LoginNeeded):
        return login_page(
            request,
            continue_to=f"{request.url.path}?{request.url.query}",
            client_name=result.client_name,
            form_target=redirect_uris.form_action_source(result.redirect_uri),
        )
    if result.location:
        return RedirectResponse(result.location, status_code=302, headers=NO_STORE)
    detail = str(result.body.get("detail", "The request is not valid."))
    return pages.message("This sign-in link is not valid", detail, status=400)


async def _login_target(ctx: Any, continue_to: str, ip: str | None) -> tuple[str | None, str | None]:
    """The client's name and form target to show the login page again with, after a failed attempt."""
    path, _, query = continue_to.partition("?")
    if path != "/v1/oauth/authorize":
        return None, None
    items = parse_qsl(query, keep_blank_values=True)
    result = await authorization.authorize(ctx, Incoming("GET", {}, items, ip))
    if isinstance(result, LoginNeeded):
        return result.client_name, redirect_uris.form_action_source(result.redirect_uri)
    return None, None


def _failed_login(exc: HandshakeError) -> str:
    if isinstance(exc, TooManyAttemptsError):
        return f"Too many failed attempts. Try again in {exc.retry_after} seconds."
    if isinstance(exc, AccountDisabledError):
        return "This account is disabled."
    return "The username or password is wrong."


async def _sign_in_form(request: Request) -> tuple[dict[str, str], str] | Response:
    """A hosted sign-in form (password or code step) and the page it continues to, once it is readable,
    posted by our own page (origin and anti-forgery token) and continuing to one of ours; else the
    refusal page."""
    form = await read_form(request)
    if form is None:
        return pages.message("Sign-in refused", "The form could not be read.", status=400)
    if not pages.same_origin(request) or not hosted.form_token_ok(
        pages.read_cookie(request, pages.FORM_COOKIE), form.get("csrf")
    ):
        return pages.message("Sign-in refused", REFUSED, status=403)
    continue_to = pages.safe_continue(form.get("continue"))
    if continue_to is None:
        return pages.message("Sign-in refused", "The page to continue to is not one of ours.", status=400)
    return form, continue_to


@router.post("/v1/oauth/login", include_in_schema=False)
async def sign_in(request: Request, ctx: CtxDep, ip: ClientIp) -> Response:
    """The hosted login form: the password step (the lockout of /v1/auth/login, counted together),
    then on to the authorization request or /device it came from."""
    checked = await _sign_in_form(request)
    if isinstance(checked, Response):
        return checked
    form, continue_to = checked
    username, password = form.get("username", ""), form.get("password", "")
    try:
        if not username or not password or len(username) > 256 or len(password) > 1024:
            raise InvalidCredentialsError()
        signed = await hosted.sign_in(ctx, username=username, password=password, ip=ip, user_agent=user_agent(request))
    except (InvalidCredentialsError, AccountDisabledError, TooManyAttemptsError) as exc:
        client_name, form_target = await _login_target(ctx, continue_to, ip)
        return login_page(
            request,
            continue_to=continue_to,
            client_name=client_name,
            form_target=form_target,
            error=_failed_login(exc),
            username=username[:256],
            status=400 if isinstance(exc, InvalidCredentialsError) else exc.status_code,
            headers=exc.extra_headers,
        )
    if isinstance(signed, str):  # a second factor: its form next, carrying the password step's token
        return await _code_page(request, ctx, continue_to=continue_to, mfa_token=signed, ip=ip)
    return await _signed_in(request, ctx, signed[0], continue_to, ip)


async def _code_page(
    request: Request,
    ctx: Any,
    *,
    continue_to: str,
    mfa_token: str,
    ip: str | None,
    error: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    client_name, form_target = await _login_target(ctx, continue_to, ip)
    return _form_page(
        request,
        "mfa.html",
        status=status,
        headers=headers,
        form_target=form_target,
        title="Second factor",
        client_name=client_name,
        error=error,
        continue_to=continue_to,
        mfa_token=mfa_token,
    )


@router.post("/v1/oauth/login/mfa", include_in_schema=False)
async def sign_in_with_factor(request: Request, ctx: CtxDep, ip: ClientIp) -> Response:
    """The hosted code form (SPEC §12): the password step's mfa_token and a code or recovery code."""
    checked = await _sign_in_form(request)
    if isinstance(checked, Response):
        return checked
    form, continue_to = checked
    mfa_token, typed = form.get("mfa_token", ""), form.get("code", "")
    try:
        if not typed:
            raise ValidationFailedError("Enter a code.")
        token, _ = await hosted.sign_in_with_factor(
            ctx, mfa_token=mfa_token, typed=typed, ip=ip, user_agent=user_agent(request)
        )
    except InvalidMfaTokenError:
        client_name, form_target = await _login_target(ctx, continue_to, ip)
        return login_page(
            request,
            continue_to=continue_to,
            client_name=client_name,
            form_target=form_target,
            error="That sign-in took too long or was already used. Sign in again.",
            status=400,
        )
    except (InvalidCodeError, ValidationFailedError, TooManyAttemptsError, AccountDisabledError) as exc:
        message = _failed_login(exc) if isinstance(exc, TooManyAttemptsError | AccountDisabledError) else None
        return await _code_page(
            request,
            ctx,
            continue_to=continue_to,
            mfa_token=mfa_token,
            ip=ip,
            error=message or "That code is wrong, too old or already used.",
            status=exc.status_code if isinstance(exc, TooManyAttemptsError | AccountDisabledError) else 400,
            headers=exc.extra_headers,
        )
    return await _signed_in(request, ctx, token, continue_to, ip)


async def _signed_in(request: Request, ctx: Any, token: str, continue_to: str, ip: str | None) -> Response:
    _, previous = await current(ctx, request)
    if previous is not None:  # another user signing in on this browser: the old login ends
        await hosted.sign_out(ctx, login=previous, ip=ip)
    response = RedirectResponse(continue_to, status_code=303, headers=NO_STORE)
    pages.set_cookie(response, request, pages.LOGIN_COOKIE, token, max_age=hosted.HOSTED_LOGIN_TTL, lax=True)
    return response


@router.post("/v1/oauth/logout", include_in_schema=False)
async def sign_out(request: Request, ctx: CtxDep, ip: ClientIp) -> Response:
    token, login = await current(ctx, request)
    form = await read_form(request) or {}
    if login is not None:
        if not pages.same_origin(request) or not hosted.form_token_ok(token, form.get("csrf")):
            return pages.message("Sign-out refused", REFUSED, status=403)
        await hosted.sign_out(ctx, login=login, ip=ip)
    response = pages.message("Signed out", "You are signed out on this browser.", status=200)
    pages.clear_cookie(response, request, pages.LOGIN_COOKIE)
    return response


@router.post("/v1/oauth/device_authorization", openapi_extra=body_doc(DeviceAuthorizationIn))
async def device_authorization(request: Request, ctx: CtxDep, ip: ClientIp) -> JSONResponse:
    """RFC 8628 §3.1: `client_id` (and its secret, for a confidential client) → `device_code`,
    `user_code`, `verification_uri`, `verification_uri_complete`, `expires_in`, `interval`."""
    await device_codes.rate_limit_requests(ctx, ip)
    items = form_items(await body_fields(request))
    outcome = await authorization.device_authorization(ctx, Incoming("POST", request.headers, items, ip))
    return json_outcome(outcome)


@router.get("/v1/oauth/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    media_type = pages.STATIC.get(name)
    if media_type is None:
        raise NotFoundError()
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(pages.static_file(name), media_type=media_type, headers=headers)
