"""The hosted pages, rendered on the server (Jinja2, autoescaped): no script at all, under the dashboard's
Content-Security-Policy. The one difference: the login form that ends an authorization request may
end at that request's (registered, matched) redirect URI, so the form-action names it too."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from account_manager.routes.dashboard import CONTENT_SECURITY_POLICY, SECURITY_HEADERS

LOGIN_COOKIE = "hs_login"
FORM_COOKIE = "hs_form"
# Where the login form may send the browser on: an authorization request of ours, or /device. A path
# on this origin, never a URL (no scheme, no "//", no backslash): the login page is no open redirect.
_CONTINUE = re.compile(r"/v1/oauth/authorize\?[^\\\s]*|/device(\?[^\\\s]*)?")
STATIC = {"hosted.css": "text/css; charset=utf-8"}


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("account_manager", "hosted_pages"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
    )


def safe_continue(value: str | None) -> str | None:
    if not value or len(value) > 8192 or not _CONTINUE.fullmatch(value):
        return None
    return value


def _csp(form_target: str | None) -> str:
    if form_target is None:
        return CONTENT_SECURITY_POLICY
    return CONTENT_SECURITY_POLICY.replace("form-action 'self'", f"form-action 'self' {form_target}")


def render(template: str, *, status: int = 200, form_target: str | None = None, **values: Any) -> HTMLResponse:
    body = _environment().get_template(template).render(**values)
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": _csp(form_target), "Cache-Control": "no-store"}
    # Not no-referrer: under it a browser sends `Origin: null` with a form post, and the origin check
    # above needs the real one. Other sites (the app the browser goes back to) still get no referrer.
    headers["Referrer-Policy"] = "same-origin"
    return HTMLResponse(body, status_code=status, headers=headers)


def message(title: str, text: str, *, status: int) -> HTMLResponse:
    return render("message.html", status=status, title=title, message=text)


def cookie_name(request: Request, base: str) -> str:
    # Over HTTPS the __Host- prefix: only this host, over TLS, path / may set it (no cookie tossing
    # from a sibling subdomain). Plain HTTP (development, tests) cannot use it.
    return f"__Host-{base}" if _secure(request) else base


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def read_cookie(request: Request, base: str) -> str | None:
    return request.cookies.get(cookie_name(request, base))


def set_cookie(response: Response, request: Request, base: str, value: str, *, max_age: int, lax: bool) -> None:
    """HttpOnly always. The login cookie is SameSite=Lax: an app opens the authorization endpoint from
    outside, and a signed-in browser must be recognised there. The form cookie is Strict."""
    response.set_cookie(
        cookie_name(request, base),
        value,
        max_age=max_age,
        path="/",
        secure=_secure(request),
        httponly=True,
        samesite="lax" if lax else "strict",
    )


def clear_cookie(response: Response, request: Request, base: str) -> None:
    response.delete_cookie(cookie_name(request, base), path="/", secure=_secure(request), httponly=True)


def same_origin(request: Request) -> bool:
    """A form post that a browser says came from another site is refused (login CSRF): by its Origin
    header, or Sec-Fetch-Site where it sends that. Every current browser sends one of them."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:  # a header no page can set: the browser's own word
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin == f"{request.url.scheme}://{host}"


@cache
def static_file(name: str) -> bytes:
    return resources.files("account_manager.hosted_pages").joinpath(name).read_bytes()
