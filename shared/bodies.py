"""Request bodies that may come as JSON or as a form (OAuth 2 clients send forms, apps send JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from shared import jsonlimits
from shared.errors import InvalidRequestError, ValidationFailedError

M = TypeVar("M", bound=BaseModel)
_URLENCODED = "application/x-www-form-urlencoded"
_FORMS = (_URLENCODED, "multipart/form-data")


async def body_fields(request: Request) -> dict[str, object]:
    """The fields of a JSON object or a form body, as a dict (bounded and checked), before any model."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == _URLENCODED:
        # The standard library's parser: several times cheaper than the multipart machinery's, and
        # every broker hook (a few per MQTT CONNECT on RabbitMQ) comes this way.
        text = (await request.body()).decode("utf-8", "replace")
        return _checked(dict(parse_qsl(text, keep_blank_values=True, errors="replace")))
    if content_type in _FORMS:
        form = await request.form()
        return _checked({key: value for key, value in form.items() if isinstance(value, str)})
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    return _checked(data)


def _checked(data: dict[str, object]) -> dict[str, object]:
    found = jsonlimits.problem(data)
    if found is not None:
        raise InvalidRequestError(f"The body {found}.")
    return data


def describe(errors: Sequence[Any]) -> str:
    """The first validation error as one sentence for `detail`: where, and what is wrong."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = first.get("msg", "invalid value")
    return f"{where}: {message}" if where else str(message)


def validate_body(model: type[M], data: dict[str, object]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailedError(describe(exc.errors())) from None


async def parse_body(request: Request, model: type[M]) -> M:
    return validate_body(model, await body_fields(request))


def body_doc(model: type[BaseModel]) -> dict[str, object]:
    """OpenAPI for a route that parses its body itself: JSON or form, same schema."""
    schema = _inline(model.model_json_schema())
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its `$defs` written in where they are referred to: `#/$defs/...` means nothing
    inside an OpenAPI document (ReDoc refuses the whole page over it). Our bodies are not recursive."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined
