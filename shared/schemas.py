"""What the services' response models share: building one from a domain object."""

from __future__ import annotations

from typing import Any, Self

from fastapi import Response
from pydantic import BaseModel


class Out(BaseModel):
    """A response model: the wire shape of a domain object."""

    @classmethod
    def of(cls, found: Any) -> Self:
        """From a domain object (a store row, a dataclass): its attributes of this model's field names."""
        return cls.model_validate(found, from_attributes=True)

    def response(self) -> Response:
        """This model, written as the response itself. A route that returns the model instead has FastAPI
        dump it and validate it a second time against its response_model: for the hot reads
        (`GET /v1/users/me`) that is a third of the route's own work (issue 11)."""
        return Response(self.model_dump_json(), media_type="application/json")
