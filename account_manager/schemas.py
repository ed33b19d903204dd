"""Request and response bodies of the account manager (SPEC §4). The response models are the wire
shapes of the domain's objects: routes build them, so the OpenAPI document shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from shared.models import Role
from shared.schemas import Out as _Out


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", str_max_length=8192)


class RegisterIn(_In):
    username: StrictStr = Field(max_length=64)
    password: StrictStr = Field(max_length=1024)
    email: StrictStr | None = Field(default=None, max_length=254)


class LoginIn(_In):
    username: StrictStr = Field(max_length=256)
    password: StrictStr = Field(max_length=1024)


class RefreshIn(_In):
    refresh_token: StrictStr = Field(max_length=512)


class TokenIn(_In):
    token: StrictStr = Field(max_length=16384)
    token_type_hint: StrictStr | None = None


class ExchangeIn(_In):
    audience: StrictStr = Field(max_length=256)
    nonce: StrictStr | None = Field(default=None, max_length=256)


class PasswordChangeIn(_In):
    current_password: StrictStr = Field(max_length=1024)
    new_password: StrictStr = Field(max_length=1024)


class MfaCodeIn(_In):
    code: StrictStr = Field(max_length=32)


class MfaLoginIn(_In):
    mfa_token: StrictStr = Field(max_length=256)
    code: StrictStr | None = Field(default=None, max_length=32)
    recovery_code: StrictStr | None = Field(default=None, max_length=64)


class MfaDisableIn(_In):
    password: StrictStr = Field(max_length=1024)
    code: StrictStr | None = Field(default=None, max_length=32)
    recovery_code: StrictStr | None = Field(default=None, max_length=64)


class TotpEnrolmentOut(BaseModel):
    secret: str
    otpauth_uri: str


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str]


class EmailIn(_In):
    email: StrictStr | None = Field(max_length=254)


class AdminCreateUserIn(_In):
    username: StrictStr = Field(max_length=64)
    password: StrictStr = Field(max_length=1024)
    role: Role
    email: StrictStr | None = Field(default=None, max_length=254)


class AdminUpdateUserIn(_In):
    role: Role | None = None
    disabled: StrictBool | None = None


class DeviceAuthorizationIn(_In):
    client_id: StrictStr = Field(max_length=64)
    client_secret: StrictStr | None = Field(default=None, max_length=256)
    scope: StrictStr | None = Field(default=None, max_length=1024)


class ClientIn(_In):
    name: StrictStr = Field(min_length=1, max_length=128)
    redirect_uris: list[StrictStr] = Field(default_factory=list, max_length=20)
    grant_types: list[StrictStr] = Field(default_factory=lambda: ["authorization_code"], min_length=1, max_length=3)
    type: Literal["public", "confidential"] = "public"


class ClientOut(BaseModel):
    client_id: str
    name: str
    type: str
    redirect_uris: list[str]
    grant_types: list[str]
    created_at: datetime
    client_secret: str | None = None


class TokenPairOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class RegisteredOut(BaseModel):
    id: str
    username: str
    role: str


class UserOut(_Out):
    id: str
    username: str
    email: str | None
    role: str
    created_at: datetime
    last_login_at: datetime | None
    mfa_enabled: bool = False


class AdminUserOut(UserOut):
    disabled: bool
    active_sessions: int


class SessionOut(_Out):
    id: str
    created_at: datetime
    last_used_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool


class EventOut(_Out):
    id: int
    ts: datetime
    type: str
    actor_type: str
    actor_id: str | None
    device_uid: str | None
    ip: str | None
    detail: dict[str, object]


class IntrospectionOut(BaseModel):
    """RFC 7662 §2.2. Absent fields are left out, not null: an inactive token is exactly `{"active": false}`."""

    active: bool
    sub: str | None = None
    exp: int | None = None
    iat: int | None = None
    aud: str | None = None
    iss: str | None = None
    jti: str | None = None
    token_type: str | None = None
    token_use: str | None = None
    role: str | None = None
    sid: str | None = None


class ExchangedOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    issued_token_type: str = "urn:ietf:params:oauth:token-type:access_token"


class HourlyStatsOut(_Out):
    hour: datetime  # the start of a UTC hour
    logins: int
    login_failures: int
    device_connections: int
