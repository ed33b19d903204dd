"""What the services' response models share: building one from a domain object."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel


class Out(BaseModel):
    """A response model: the wire shape of a domain object."""

    @classmethod
    def of(cls, found: Any) -> Self:
        """From a domain object (a store row, a dataclass): its attributes of this model's field names."""
        return cls.model_validate(found, from_attributes=True)
