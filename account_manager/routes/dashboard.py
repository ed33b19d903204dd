"""The admin dashboard (SPEC §8): one page and its static files, shipped inside the package, so nothing is
fetched from elsewhere at run time. The page is a plain client of the /v1/admin API: it keeps its tokens
in a JavaScript variable only, so there is no cookie to ride (CSRF) and nothing in storage to steal."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response

from shared.errors import NotFoundError
from shared.models import EventType

router = APIRouter(include_in_schema=False)

# No inline script or style at all, so an injected <script> or style attribute never runs; every fetch,
# image and form stays on this origin; no other site may frame the page (clickjacking the disable button).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# The page's script: ES modules, main.js importing the others by relative URL (so from here, under the
# CSP's script-src 'self'). A browser runs a module only when it comes as JavaScript (and nosniff holds it to that).
MODULES = (
    "main.js",
    "api.js",
    "chart.js",
    "counts.js",
    "devices.js",
    "dom.js",
    "events.js",
    "format.js",
    "labels.js",
    "login.js",
    "mfa.js",
    "pager.js",
    "scale.js",
    "sse.js",
    "tables.js",
    "timeline.js",
    "users.js",
)
# The only files served under /admin/static: a fixed list, so no name from a URL ever reaches the file system.
STATIC_TYPES = {
    **dict.fromkeys(MODULES, "text/javascript; charset=utf-8"),
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}


@cache
def _read(name: str) -> tuple[bytes, str]:
    """A file of account_manager/dashboard and its ETag, read once per process."""
    data = resources.files("account_manager.dashboard").joinpath(name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@cache
def _page() -> bytes:
    """index.html with the event types filled in from the one list of them (the filter's choices), and every
    module preloaded, so the browser asks for them all at once rather than one level of imports at a time."""
    body, _ = _read("index.html")
    types = ",".join(type_.value for type_ in EventType).encode()
    marker = b'<meta name="handshake-event-types" content="">'
    body = body.replace(marker, b'<meta name="handshake-event-types" content="' + types + b'">')
    script = b'<script type="module" src="/admin/static/main.js"></script>'
    imported = [name for name in MODULES if name != "main.js"]
    preload = "".join(f'<link rel="modulepreload" href="/admin/static/{name}">\n  ' for name in imported)
    return body.replace(script, preload.encode() + script)


@router.get("/admin")
async def page() -> Response:
    body = _page()
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


@router.get("/admin/static/{name}")
async def static(name: str, request: Request) -> Response:
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        raise NotFoundError()
    body, etag = _read(name)
    # Revalidated on every load, so an upgrade never leaves an old module talking to a new API or to
    # new modules.
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
