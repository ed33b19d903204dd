"""What a JSON document may hold, wherever one enters (an HTTP body, a device's state or reply, a
command over MQTT): at most MAX_DEPTH levels of nesting, and no NUL character in any string.

Deeper documents are refused where they arrive: orjson cannot write one back past 254 levels, Python's
own encoder past its recursion limit, and a stored document that cannot be written back would break
every read of it and every start-up that loads it. PostgreSQL's text cannot hold NUL at all."""

from __future__ import annotations

from typing import Any

import orjson

MAX_DEPTH = 32


def problem(value: object, limit: int = MAX_DEPTH) -> str | None:
    """Why `value` may not be accepted, as the end of a sentence; None when it may."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return "contains a NUL character"
            continue
        if isinstance(node, dict):
            children: Any = (item for pair in node.items() for item in pair)
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return f"nests deeper than {limit} levels"
        stack.extend((child, depth + 1) for child in children)
    return None


def dumps_or_none(value: object) -> bytes | None:
    """`value` as JSON, or None where it may not be written (a document stored before the bound)."""
    if problem(value) is not None:
        return None
    try:
        return orjson.dumps(value)
    except TypeError:
        return None
