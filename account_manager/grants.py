"""Authlib's grant classes fitted to Handshake (SPEC §12): what a request, a client, a code and a device
code are to Authlib, and the storage hooks its grants call. Authlib runs them in a worker thread
(account_manager.authorization); each hook runs our async code back on the event loop and waits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import anyio.from_thread
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE, DeviceAuthorizationEndpoint, DeviceCodeGrant

from account_manager import clients, codes, device_codes, redirect_uris
from account_manager.oauth_store import ClientRow, CodeRow, DeviceCodeRow, HostedLogin
from shared.context import Context

T = TypeVar("T")
MAX_STATE = 1024
SECRET_AUTH = ("client_secret_basic", "client_secret_post")


class WithContext(Protocol):
    """The authorization server, as the grants see it."""

    ctx: Context


@dataclass(frozen=True)
class Incoming:
    """What Authlib reads of one HTTP request, taken on the event loop before the thread starts."""

    method: str
    headers: Mapping[str, str]
    items: list[tuple[str, str]]  # query or form parameters, repeats kept (RFC 6749 §3.1 refuses them)
    ip: str | None = None
    user_agent: str | None = None
    login: HostedLogin | None = None


def wait(function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """From Authlib's worker thread: run our coroutine on the event loop and wait for it."""

    async def call() -> T:
        return await function(*args, **kwargs)

    return anyio.from_thread.run(call)


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._datalist: dict[str, list[str]] = {}
        for key, value in items:
            self._datalist.setdefault(key, []).append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, incoming: Incoming) -> None:
        # Authlib refuses a URI that is not https (except localhost) and reads it for nothing else;
        # whether a deployment runs behind TLS is its operator's choice (HANDSHAKE_TLS_CERT or a proxy).
        super().__init__(incoming.method, "https://handshake.invalid/", headers=incoming.headers)
        self.payload = _Payload(incoming.items)
        self.incoming = incoming

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data


class Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, row: ClientRow) -> None:
        self.row = row

    @property
    def public(self) -> bool:
        return self.row.secret_hash is None

    def get_client_id(self) -> str:
        return self.row.id

    def get_default_redirect_uri(self) -> str | None:
        # Only an unambiguous one: with several registered, the request must name its own.
        return self.row.redirect_uris[0] if len(self.row.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return ""  # no scopes: an access token carries the user's role, as a password login's does

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uris.matches(self.row.redirect_uris, redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return clients.secret_matches(self.row, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if self.public else method in SECRET_AUTH

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and clients.GrantType.AUTHORIZATION_CODE in self.row.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.row.grant_types


class _Code:
    """A stored code as Authlib's grant and its PKCE extension read it."""

    def __init__(self, code: str, row: CodeRow) -> None:
        self.code, self.row = code, row
        self.code_challenge, self.code_challenge_method = row.code_challenge, row.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return ""


class Pkce(CodeChallenge):  # type: ignore[misc]
    """RFC 7636 with S256 only (`plain` protects nothing a network observer cannot read), required of
    public clients at the authorization endpoint already, not only at the token endpoint."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: AuthorizationCodeGrant, redirect_uri: str) -> None:
        super().validate_code_challenge(grant, redirect_uri)
        data = grant.request.payload.data
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        if grant.request.client.public and not data.get("code_challenge"):
            raise InvalidRequestError("A public client must send a code_challenge (PKCE, S256).")


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [*SECRET_AUTH, "none"]
    server: WithContext

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        state = self.request.payload.state
        # Required, not only recommended (RFC 6749 §10.12): an app that sends none cannot tell our
        # answer from one an attacker's page made its browser fetch.
        if not state:
            raise InvalidRequestError("state is required.", redirect_uri=redirect_uri)
        if len(state) > MAX_STATE:
            raise InvalidRequestError(f"state: at most {MAX_STATE} characters.", redirect_uri=redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code: str, request: OAuthRequest) -> None:
        data = request.payload.data
        wait(
            codes.save_code,
            self.server.ctx,
            code=code,
            client_id=request.client.get_client_id(),
            login=request.user,
            redirect_uri=request.payload.redirect_uri,
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
        )

    def query_authorization_code(self, code: str, client: Client) -> _Code | None:
        row = wait(codes.find_code, self.server.ctx, code=code, client_id=client.get_client_id(), ip=self._ip)
        return None if row is None else _Code(code, row)

    def authenticate_user(self, authorization_code: _Code) -> CodeRow:
        return authorization_code.row

    def generate_token(self, user: CodeRow, **_: Any) -> dict[str, Any]:
        code: _Code = self.request.authorization_code
        incoming = self.request.incoming
        pair = wait(
            codes.redeem_code, self.server.ctx, code=code.code, row=user, ip=self._ip, user_agent=incoming.user_agent
        )
        if pair is None:
            raise InvalidGrantError("The code was used already.")
        return pair.to_json()

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        pass  # used up in generate_token's transaction, so that one redemption wins

    @property
    def _ip(self) -> str | None:
        return self.request.incoming.ip  # type: ignore[no-any-return]


class _DeviceCredential:
    def __init__(self, row: DeviceCodeRow) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_scope(self) -> str:
        return ""

    def get_user_code(self) -> str:
        return ""  # only its hash is stored; query_user_grant reads the row instead

    def is_expired(self) -> bool:
        return device_codes.expired(self.row)


class DeviceGrant(DeviceCodeGrant):  # type: ignore[misc]
    server: WithContext

    def authenticate_token_endpoint_client(self) -> Client:
        client = super().authenticate_token_endpoint_client()
        assert isinstance(client, Client)
        self._client = client
        return client

    def query_device_credential(self, device_code: str) -> _DeviceCredential:
        row = wait(device_codes.find_device_code, self.server.ctx, device_code)
        # Unknown, used, or another client's: invalid_grant (RFC 6749 §5.2), all alike.
        if row is None or row.client_id != self._client.get_client_id() or row.status == "redeemed":
            raise InvalidGrantError("The device code is unknown, used, or was issued to another client.")
        self._credential = _DeviceCredential(row)
        return self._credential

    def query_user_grant(self, user_code: str) -> tuple[DeviceCodeRow, bool] | None:
        row = self._credential.row
        if row.status == "pending":
            return None
        return row, row.status == "approved"

    def should_slow_down(self, credential: _DeviceCredential) -> bool:
        return wait(device_codes.record_poll, self.server.ctx, credential.row)

    def generate_token(self, user: DeviceCodeRow, **_: Any) -> dict[str, Any]:
        incoming = self.request.incoming
        pair = wait(
            device_codes.redeem_device_code, self.server.ctx, row=user, ip=incoming.ip, user_agent=incoming.user_agent
        )
        if pair is None:
            raise InvalidGrantError("The device code was used already, or its user can no longer log in.")
        return pair.to_json()


class DeviceEndpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
    EXPIRES_IN = device_codes.DEVICE_CODE_TTL
    INTERVAL = device_codes.INTERVAL
    server: WithContext

    def authenticate_client(self, request: OAuthRequest) -> Client:
        client = super().authenticate_client(request)
        assert isinstance(client, Client)
        if not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
            raise UnauthorizedClientError("This client is not registered for the device code grant.")
        return client

    def generate_user_code(self) -> str:
        return device_codes.new_user_code()

    def get_verification_uri(self) -> str:
        return self.server.ctx.settings.issuer.rstrip("/") + "/device"

    def save_device_credential(self, client_id: str, scope: str | None, data: dict[str, Any]) -> None:
        user_code = wait(
            device_codes.save_device_code,
            self.server.ctx,
            client_id=client_id,
            device_code=data["device_code"],
            user_code=data["user_code"],
        )
        if user_code != data["user_code"]:  # it clashed with a live code: the one stored goes out
            data["user_code"] = user_code
            data["verification_uri_complete"] = f"{data['verification_uri']}?user_code={user_code}"
