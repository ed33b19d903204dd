"""The catalogue of SPEC error codes. Each error carries its wire code, HTTP status and headers and
renders itself as {"error", "detail"} (SPEC §2); one handler in app.py turns them into responses."""

from __future__ import annotations

from typing import ClassVar


class HandshakeError(Exception):
    code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500
    default_detail: ClassVar[str] = "Something went wrong."

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or self.default_detail
        self.extra_headers = headers or {}
        super().__init__(self.detail)

    @property
    def headers(self) -> dict[str, str]:
        if self.status_code == 401:  # SPEC §2, RFC 6750 §3: every 401 names the scheme and the error
            return {"WWW-Authenticate": 'Bearer error="invalid_token"', **self.extra_headers}
        return self.extra_headers

    def body(self) -> dict[str, object]:
        return {"error": self.code, "detail": self.detail}


class InvalidRequestError(HandshakeError):
    code = "invalid_request"
    status_code = 400
    default_detail = "The request is malformed."


class ValidationFailedError(HandshakeError):
    code = "validation_error"
    status_code = 422
    default_detail = "The request body is not valid."


class WeakPasswordError(HandshakeError):
    code = "weak_password"
    status_code = 422
    default_detail = "The password must have at least 8 characters and must not be a common password."


class PayloadTooLargeError(HandshakeError):
    code = "payload_too_large"
    status_code = 413
    default_detail = "The request body is larger than 64 KiB."


class InvalidTokenError(HandshakeError):
    """Any token that fails verification. The precise reason is logged, never returned (STYLE)."""

    code = "invalid_token"
    status_code = 401
    default_detail = "The access token is missing, invalid, expired or revoked."


class MissingTokenError(InvalidTokenError):
    default_detail = "An access token is required."


class MfaEnrolmentRequiredError(InvalidTokenError):
    """A good token of a user who must enrol a second factor first (SPEC §12), anywhere but the
    enrolment routes. An InvalidTokenError, so that every door that refuses a bad token (the broker,
    the hooks, introspection) refuses this one too; on HTTP a 403: the token is fine, keep it."""

    code = "mfa_enrolment_required"
    status_code = 403
    default_detail = "Set up a second factor first: POST /v1/users/me/mfa/totp, then confirm it."


class InvalidCredentialsError(HandshakeError):
    code = "invalid_credentials"
    status_code = 401
    default_detail = "The username or password is wrong."


class MfaRequiredError(HandshakeError):
    """The password was right and the user has a second factor: no tokens yet, an `mfa_token` to
    exchange with a code at POST /v1/auth/mfa (SPEC §12). The body has one field more than others."""

    code = "mfa_required"
    status_code = 401
    default_detail = "A second factor is required: send a code with this mfa_token to /v1/auth/mfa."

    def __init__(self, mfa_token: str, detail: str | None = None) -> None:
        super().__init__(detail)
        self.mfa_token = mfa_token

    def body(self) -> dict[str, object]:
        return {**super().body(), "mfa_token": self.mfa_token}


class InvalidMfaTokenError(HandshakeError):
    code = "invalid_mfa_token"
    status_code = 401
    default_detail = "The mfa_token is unknown, expired, already used or was issued to another address; log in again."


class InvalidCodeError(HandshakeError):
    code = "invalid_code"
    status_code = 400
    default_detail = "The code is wrong, too old or already used."


class InvalidGrantError(HandshakeError):
    # RFC 6749 §5.2
    code = "invalid_grant"
    status_code = 401
    default_detail = "The refresh token is unknown, expired or revoked."


class TokenEndpointGrantError(HandshakeError):
    # The token endpoint answers as RFC 6749 §5.2 says: 400 invalid_grant, whatever was wrong.
    code = "invalid_grant"
    status_code = 400
    default_detail = "The credentials or refresh token are not valid."


class TokenEndpointMfaRequiredError(TokenEndpointGrantError):
    """The password grant for a user with a second factor: no tokens without it. RFC 6749 §5.2's
    invalid_grant, naming why (`mfa_required`) and carrying the `mfa_token` that POST /v1/auth/mfa
    takes with a code, as /v1/auth/login's 401 mfa_required does."""

    default_detail = "A second factor is required: send a code with this mfa_token to /v1/auth/mfa."

    def __init__(self, mfa_token: str) -> None:
        super().__init__()
        self.mfa_token = mfa_token

    def body(self) -> dict[str, object]:
        return {**super().body(), "mfa_required": True, "mfa_token": self.mfa_token}


class RefreshTokenReusedError(HandshakeError):
    code = "refresh_token_reused"
    status_code = 401
    default_detail = "This refresh token was already used; the session has been ended."


class UnsupportedGrantTypeError(HandshakeError):
    code = "unsupported_grant_type"
    status_code = 400
    default_detail = (
        "The grant_type must be password, refresh_token, authorization_code or"
        " urn:ietf:params:oauth:grant-type:device_code."
    )


class InvalidTargetError(HandshakeError):
    code = "invalid_target"
    status_code = 400
    default_detail = "That audience is not a partner of this platform."


class ForbiddenError(HandshakeError):
    code = "forbidden"
    status_code = 403
    default_detail = "You may not do that."


class AccountDisabledError(HandshakeError):
    code = "account_disabled"
    status_code = 403
    default_detail = "This account is disabled."


class RegistrationClosedError(HandshakeError):
    code = "registration_closed"
    status_code = 403
    default_detail = "Registration is closed on this platform."


class NotFoundError(HandshakeError):
    code = "not_found"
    status_code = 404
    default_detail = "There is nothing here."


class MethodNotAllowedError(HandshakeError):
    code = "method_not_allowed"
    status_code = 405
    default_detail = "That method is not allowed here."


class UsernameTakenError(HandshakeError):
    code = "username_taken"
    status_code = 409
    default_detail = "That username is taken."


class TooManyAttemptsError(HandshakeError):
    code = "too_many_attempts"
    status_code = 429
    default_detail = "Too many failed attempts; try again later."

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = retry_after


class RateLimitedError(TooManyAttemptsError):
    code = "rate_limited"
    default_detail = "Too many requests; slow down."


class ServiceUnavailableError(HandshakeError):
    code = "service_unavailable"
    status_code = 503
    default_detail = "A backend (database or Redis) is unreachable; try again shortly."

    def __init__(self, detail: str | None = None, *, retry_after: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ConfigurationError(Exception):
    """A bad setting or environment problem found at start-up: one line for the command line."""


# --- The device manager's (SPEC §5) ---------------------------------------------------------------


class DeviceDisabledError(HandshakeError):
    code = "device_disabled"
    status_code = 403
    default_detail = "This device is disabled."


class UidTakenError(HandshakeError):
    code = "uid_taken"
    status_code = 409
    default_detail = "A device with that UID exists already."


class InvalidClaimCodeError(HandshakeError):
    code = "invalid_claim_code"
    status_code = 403
    default_detail = "The UID or claim code is wrong."


class AlreadyBoundError(HandshakeError):
    code = "already_bound"
    status_code = 409
    default_detail = "This device belongs to someone else; its owner must unbind it first."


class InvalidPairingTokenError(HandshakeError):
    code = "invalid_pairing_token"
    status_code = 403
    default_detail = "The pairing token is unknown, used or expired."


class CannotShareWithOwnerError(InvalidRequestError):
    default_detail = "The owner already has every right on the device."


# --- The device connector's (SPEC §6) -------------------------------------------------------------


class DeviceOfflineError(HandshakeError):
    code = "device_offline"
    status_code = 409
    default_detail = "The device is not connected."


class DeviceTimeoutError(HandshakeError):
    code = "device_timeout"
    status_code = 504
    default_detail = "The device did not reply in time."


class UnauthorizedHookError(HandshakeError):
    code = "invalid_hook_secret"
    status_code = 401
    default_detail = "The hook secret is missing or wrong."


# --- The account manager's variants: a catalogue code at another status, and the second factor (SPEC §4, §12) ---


class WrongPasswordError(InvalidCredentialsError):
    # 403, not 401: a mobile app drops its tokens on 401, and the caller's token is fine.
    status_code = 403
    default_detail = "The current password is wrong."


class MfaAlreadyEnabledError(HandshakeError):
    code = "mfa_already_enabled"
    status_code = 409
    default_detail = "A second factor is already on; turn it off first (DELETE /v1/users/me/mfa) to replace it."


class WrongCodeError(InvalidCodeError):
    # The second step of a login: a failed authentication, like a wrong password (401).
    status_code = 401


class WrongFactorError(InvalidCodeError):
    # Turning the factor off with a bad code: 403, not 401, since the caller's token is fine and a
    # mobile app drops its tokens on 401.
    status_code = 403
