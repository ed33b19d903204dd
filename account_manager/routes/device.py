"""The verification page of the device grant (RFC 8628 §3.3): `/device`, where a user signed in on the
hosted page types the code a hub shows, sees which client asks, and approves or denies it. The code
in `verification_uri_complete` only fills the field in: approving is always a deliberate second step
(RFC 8628 §5.4: a code a stranger sent is not approved by opening a link)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from account_manager import device_codes, hosted, pages
from account_manager.device_codes import UserCodeNotFoundError, normalize_user_code
from account_manager.oauth_store import HostedLogin
from account_manager.routes.oauth import REFUSED, current, login_page, read_form
from shared.deps import ClientIp, CtxDep
from shared.errors import TooManyAttemptsError

router = APIRouter(include_in_schema=False)
NOT_FOUND = "That code is not valid, or it has expired. Check the code on your device."


def _shown(typed: str) -> str:
    """A code as the page shows it back: XXXX-XXXX when it is one, else what was typed (escaped)."""
    code = normalize_user_code(typed)
    return f"{code[:4]}-{code[4:]}" if code else typed[:64]


def _page(
    token: str,
    login: HostedLogin,
    *,
    step: str,
    user_code: str = "",
    client_name: str = "",
    approved: bool = False,
    error: str | None = None,
    status: int = 200,
) -> Response:
    return pages.render(
        "device.html",
        status=status,
        title="Connect a device",
        step=step,
        csrf=hosted.form_token(token),
        username=login.username,
        user_code=user_code,
        client_name=client_name,
        approved=approved,
        error=error,
    )


@router.get("/device")
async def device_page(request: Request, ctx: CtxDep) -> Response:
    token, login = await current(ctx, request)
    typed = request.query_params.get("user_code", "")
    if token is None or login is None:
        shown = _shown(typed)
        continue_to = "/device" + (f"?user_code={quote(shown)}" if shown else "")
        return login_page(request, continue_to=continue_to, client_name=None, form_target=None)
    return _page(token, login, step="enter", user_code=_shown(typed))


@router.post("/device")
async def device_decision(request: Request, ctx: CtxDep, ip: ClientIp) -> Response:
    token, login = await current(ctx, request)
    if token is None or login is None:
        return login_page(request, continue_to="/device", client_name=None, form_target=None, status=401)
    form = await read_form(request)
    if form is None or not pages.same_origin(request) or not hosted.form_token_ok(token, form.get("csrf")):
        return pages.message("Request refused", REFUSED, status=403)
    typed = form.get("user_code", "")
    decision = form.get("decision")
    if decision not in (None, "approve", "deny"):
        return _page(token, login, step="enter", user_code=_shown(typed), error="Approve or deny.", status=400)
    try:
        if decision is None:
            row = await device_codes.pending_for(ctx, login=login, user_code=typed, ip=ip)
            return _page(token, login, step="confirm", user_code=_shown(typed), client_name=row.client_name)
        row = await device_codes.decide(ctx, login=login, user_code=typed, approve=decision == "approve", ip=ip)
    except UserCodeNotFoundError:
        return _page(token, login, step="enter", user_code=_shown(typed), error=NOT_FOUND, status=400)
    except TooManyAttemptsError as exc:
        error = f"Too many wrong codes. Try again in {exc.retry_after} seconds."
        response = _page(token, login, step="enter", user_code=_shown(typed), error=error, status=429)
        response.headers.update(exc.extra_headers)
        return response
    return _page(token, login, step="done", client_name=row.client_name, approved=decision == "approve")
