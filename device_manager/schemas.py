"""Request and response bodies of the device manager (SPEC §5). The response models are the wire
shapes of the domain's objects: routes build them, so the OpenAPI document shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from shared.schemas import Out as _Out


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProvisionIn(_In):
    model: StrictStr = Field(min_length=1, max_length=64)
    count: StrictInt = Field(default=1, ge=1, le=1000)
    uids: list[StrictStr] | None = Field(default=None, max_length=1000)
    name: StrictStr | None = Field(default=None, max_length=128)


class DeviceCredentialsIn(_In):
    uid: StrictStr = Field(max_length=64)
    secret: StrictStr = Field(max_length=256)


class BindIn(_In):
    uid: StrictStr = Field(max_length=64)
    claim_code: StrictStr = Field(max_length=64)


class PairIn(DeviceCredentialsIn):
    pairing_token: StrictStr = Field(max_length=256)


class RenameIn(_In):
    name: StrictStr = Field(min_length=1, max_length=128)


class ShareIn(_In):
    username: StrictStr = Field(max_length=64)
    role: Literal["viewer", "controller"]


class TransferIn(_In):
    username: StrictStr = Field(max_length=64)


class ProvisionedDeviceOut(_Out):
    uid: str
    secret: str
    claim_code: str


class ProvisionedOut(BaseModel):
    devices: list[ProvisionedDeviceOut]


class DeviceTokenOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class BoundOut(_Out):
    uid: str
    role: str


class PairedOut(BoundOut):
    owner_id: str


class PairingTokenOut(BaseModel):
    pairing_token: str
    expires_in: int


class DeviceSummaryOut(_Out):
    """One line of `GET /v1/devices`."""

    uid: str
    name: str | None
    model: str
    role: str
    online: bool
    last_seen: datetime | None


class DeviceOut(BaseModel):
    uid: str
    name: str | None
    model: str
    role: str
    owner_id: str | None
    online: bool
    last_seen: datetime | None
    connected_at: datetime | None
    ip: str | None
    region: str | None


class ShareOut(_Out):
    user_id: str
    username: str
    role: str
    created_at: datetime


class SharedOut(ShareOut):
    uid: str


class TransferOut(_Out):
    uid: str
    owner_id: str
    owner_username: str


class DeviceDisabledOut(_Out):
    uid: str
    disabled: bool
