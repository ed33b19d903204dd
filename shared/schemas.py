"""What the services' response models share: building one from a domain object, and the timestamp
that some answers write the way they always have."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, PlainSerializer, WithJsonSchema


class Out(BaseModel):
    """A response model: the wire shape of a domain object."""

    @classmethod
    def of(cls, found: Any) -> Self:
        """From a domain object (a store row, a dataclass): its attributes of this model's field names."""
        return cls.model_validate(found, from_attributes=True)


# Written as datetime.isoformat() writes it ("+00:00"), as the answers that use it always were (FastAPI's
# encoder wrote them before they had a model); pydantic's own JSON would write "Z". Both are RFC 3339,
# but a client comparing strings must not see a change.
IsoTimestamp = Annotated[
    datetime,
    PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
