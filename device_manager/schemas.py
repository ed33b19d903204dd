"""Request bodies of the device manager (SPEC §5)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


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
