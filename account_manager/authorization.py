"""The OAuth 2 authorization server (SPEC §12): the authorization code grant with PKCE (RFC 6749 §4.1,
RFC 7636, S256 only) and the device authorization grant (RFC 8628), on Authlib's grant classes
(account_manager.grants). Both end in `sessions.issue_session`, the token pair and session of a
password login.

Authlib's server is synchronous; our storage is not. A request runs Authlib in a worker thread (a
bounded number at once), and each storage hook Authlib calls runs our async code back on the event
loop (anyio.from_thread.run), so the database is used as everywhere else. Authlib decides the
protocol (parameters, client authentication, redirect rules, PKCE, polling errors); we decide what
is stored and how a session is opened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from authlib.oauth2.rfc6749 import AuthorizationServer
from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error

from account_manager import clients
from account_manager.grants import Client, CodeGrant, DeviceEndpoint, DeviceGrant, Incoming, OAuthRequest, Pkce, wait
from shared.context import Context
from shared.registry import Key

__all__ = ["Incoming", "LoginNeeded", "Outcome", "authorize", "device_authorization", "token"]
WORKERS = 8  # Authlib requests in threads at once; more wait (their storage calls run on the loop anyway)


@dataclass(frozen=True)
class Outcome:
    """An answer: a JSON body (tokens, device codes, an error) or a redirect (Location in headers)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


@dataclass(frozen=True)
class LoginNeeded:
    """A valid authorization request from a browser that is not signed in: show the login page."""

    client_name: str
    redirect_uri: str


class Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.register_grant(CodeGrant, [Pkce(required=True)])
        self.register_grant(DeviceGrant)
        self.register_endpoint(DeviceEndpoint)

    def query_client(self, client_id: str) -> Client | None:
        row = wait(clients.find_client, self.ctx, client_id)
        return None if row is None else Client(row)

    def save_token(self, token: dict[str, Any], request: OAuthRequest) -> None:
        pass  # the session and its refresh token were stored by generate_token, in one transaction

    def create_oauth2_request(self, request: OAuthRequest | Incoming) -> OAuthRequest:
        return request if isinstance(request, OAuthRequest) else OAuthRequest(request)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def handle_response(self, status: int, body: Any, headers: Any) -> Outcome:
        return Outcome(status, body if isinstance(body, dict) else {}, dict(headers))

    def handle_error_response(self, request: OAuthRequest, error: OAuth2Error) -> Outcome:
        return failure(error)


def failure(error: OAuth2Error) -> Outcome:
    """An error as SPEC §2 writes them ({"error", "detail"}), or, once the client and its redirect
    URI are known good, as a redirect back to it with error and state (RFC 6749 §4.1.2.1)."""
    status, _, headers = error()
    if error.redirect_uri:
        return Outcome(status, {}, dict(headers), error=error.error)
    detail = error.description or error.error.replace("_", " ").capitalize() + "."
    return Outcome(status, {"error": error.error, "detail": detail}, dict(headers), error=error.error)


OAUTH_SERVER = Key[tuple["Server", anyio.CapacityLimiter]]("oauth_server")


def _server(ctx: Context) -> tuple[Server, anyio.CapacityLimiter]:
    return ctx.services.get(OAUTH_SERVER, lambda: (Server(ctx), anyio.CapacityLimiter(WORKERS)))


async def _run(ctx: Context, work: Callable[[Server, OAuthRequest], Any], incoming: Incoming) -> Any:
    server, limiter = _server(ctx)

    def in_thread() -> Any:
        request = OAuthRequest(incoming)
        try:
            return work(server, request)
        except OAuth2Error as error:
            error.state = error.state or request.payload.state
            return failure(error)
        except (ValueError, UnicodeError):
            # Authlib builds some messages from the request (a redirect URI with a quote, a Basic
            # header that is not UTF-8) and fails on them: the request was malformed.
            return failure(InvalidRequestError("The request is malformed."))

    return await anyio.to_thread.run_sync(in_thread, limiter=limiter)


async def token(ctx: Context, incoming: Incoming) -> Outcome:
    """POST /v1/auth/token for grant_type=authorization_code and the device code grant."""
    outcome: Outcome = await _run(ctx, lambda server, request: server.create_token_response(request), incoming)
    return outcome


async def device_authorization(ctx: Context, incoming: Incoming) -> Outcome:
    """POST /v1/oauth/device_authorization (RFC 8628 §3.1-3.2)."""
    outcome: Outcome = await _run(
        ctx, lambda server, request: server.create_endpoint_response("device_authorization", request), incoming
    )
    return outcome


def _authorize(server: Server, request: OAuthRequest) -> Outcome | LoginNeeded:
    login = request.incoming.login
    grant = server.get_consent_grant(request, end_user=login)
    if login is None:
        return LoginNeeded(grant.client.row.name, grant.redirect_uri)
    # First-party clients only (an admin registers them): no consent screen.
    outcome: Outcome = server.create_authorization_response(request, grant_user=login, grant=grant)
    return outcome


async def authorize(ctx: Context, incoming: Incoming) -> Outcome | LoginNeeded:
    """GET /v1/oauth/authorize: a code for a signed-in browser, the login page for another, or an error
    (redirected to the client only once the client and the redirect URI are known good)."""
    result: Outcome | LoginNeeded = await _run(ctx, _authorize, incoming)
    return result
