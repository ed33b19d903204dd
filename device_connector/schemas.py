"""Request bodies of the device connector (SPEC §6)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action: StrictStr = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(default=10, ge=1, le=60)
