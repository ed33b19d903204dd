"""Helpers of the OAuth tests: register a client as an admin, a browser on the hosted pages (cookies
kept, Origin sent on form posts as browsers do), and an app or a hub built on Authlib's OAuth 2
client, all talking to the app in this process."""

from __future__ import annotations

import secrets
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from fastapi import FastAPI

from shared.context import Context
from tests.conftest import Users, bearer

ISSUER = "http://testserver"
TOKEN_URL = f"{ISSUER}/v1/auth/token"
AUTHORIZE_URL = f"{ISSUER}/v1/oauth/authorize"
DEVICE_URL = f"{ISSUER}/v1/oauth/device_authorization"
REGISTERED = "http://127.0.0.1/callback"
APP_REDIRECT = "http://127.0.0.1:43817/callback"  # the loopback URI, on the port the app got (RFC 8252 §7.3)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PASSWORD = "correct horse battery"
BROWSER_IP = "198.51.100.20"


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("name"):
            self.fields[str(found["name"])] = found.get("value") or ""


def form_fields(html: str) -> dict[str, str]:
    """The named inputs of a page's forms, values unescaped (the last form's win on a clash)."""
    parser = _Inputs()
    parser.feed(html)
    return parser.fields


def query_of(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


async def register_client(client: httpx.AsyncClient, ctx: Context, users: Users, **body: Any) -> dict[str, Any]:
    _, admin = await users.admin(ctx)
    wanted = {"name": "Lamp app", "redirect_uris": [REGISTERED], "grant_types": ["authorization_code", DEVICE_GRANT]}
    response = await client.post("/v1/admin/clients", json={**wanted, **body}, headers=bearer(admin))
    assert response.status_code == 201, response.text
    registered: dict[str, Any] = response.json()
    return registered


class Browser:
    """A browser on the hosted pages."""

    def __init__(self, app: FastAPI, ip: str = BROWSER_IP) -> None:
        transport = httpx.ASGITransport(app=app.state.lifespan_app, client=(ip, 50000))
        self.http = httpx.AsyncClient(transport=transport, base_url=ISSUER)

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, url: str) -> httpx.Response:
        return await self.http.get(url.removeprefix(ISSUER))

    async def post_form(self, url: str, data: dict[str, str], origin: str | None = ISSUER) -> httpx.Response:
        headers = {"Origin": origin} if origin else {}
        return await self.http.post(url, data=data, headers=headers)

    async def sign_in(self, page: httpx.Response, username: str, password: str = PASSWORD) -> httpx.Response:
        """Fill in and send the login form of `page`."""
        fields = form_fields(page.text)
        data = {"csrf": fields["csrf"], "continue": fields["continue"], "username": username, "password": password}
        return await self.post_form("/v1/oauth/login", data)

    async def authorize(self, url: str, username: str, password: str = PASSWORD) -> str:
        """Open an authorization URL, sign in if asked, and return where the browser is sent back to."""
        page = await self.get(url)
        if page.status_code == 200 and "login-form" in page.text:
            signed_in = await self.sign_in(page, username, password)
            assert signed_in.status_code == 303, signed_in.text
            page = await self.get(signed_in.headers["location"])
        assert page.status_code == 302, page.text
        return page.headers["location"]

    async def approve(self, user_code: str, *, decision: str = "approve") -> httpx.Response:
        """On /device (signed in): type the code, then approve or deny on the confirmation page."""
        entry = await self.get("/device")
        typed = await self.post_form("/device", {"csrf": form_fields(entry.text)["csrf"], "user_code": user_code})
        assert typed.status_code == 200, typed.text
        fields = form_fields(typed.text)
        return await self.post_form(
            "/device", {"csrf": fields["csrf"], "user_code": fields["user_code"], "decision": decision}
        )


def oauth_client(app: FastAPI, client_id: str, **kwargs: Any) -> AsyncOAuth2Client:
    """An app or a hub: Authlib's OAuth 2 client, as a native app or a device would use it."""
    transport = httpx2.ASGITransport(app=app.state.lifespan_app, client=("203.0.113.50", 41000))
    kwargs.setdefault("redirect_uri", APP_REDIRECT)
    return AsyncOAuth2Client(client_id=client_id, code_challenge_method="S256", transport=transport, **kwargs)


def new_verifier() -> str:
    verifier: str = generate_token(64)
    return verifier


def new_state() -> str:
    return secrets.token_urlsafe(16)
