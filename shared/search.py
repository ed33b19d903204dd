"""Prefix search that an index answers on both backends, for the admin lists at fleet size.

A prefix is the range `prefix <= key < successor(prefix)`, and a range is only right when the key is
compared byte by byte: SQLite's default (BINARY) does; a PostgreSQL database's own collation need not
(en_US ignores punctuation, so '9' < ':' < 'A' no longer holds), hence `COLLATE "C"` there, on the
query and on the indexes of shared.tables alike. Unlike `LIKE 'x%'`, the range needs neither
`text_pattern_ops`, nor SQLite's case-insensitive LIKE rules, nor a plan that knows the parameter.
Terms joined by OR stay index lookups (SQLite's multi-index OR, PostgreSQL's BitmapOr), so a search
costs what it finds, not the size of the table."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# The last code point, and the surrogates that UTF-8 cannot carry (skipped when counting up).
_MAX = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


class bytewise(FunctionElement[str]):  # noqa: N801 (reads like the SQL function it stands for)
    """An expression compared byte by byte: itself on SQLite, `(expr) COLLATE "C"` on PostgreSQL."""

    type = sa.String()
    inherit_cache = True
    name = "bytewise"


@compiles(bytewise)
def _plain(element: bytewise, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(bytewise, "postgresql")
def _c_collation(element: bytewise, compiler: Any, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


def successor(prefix: str) -> str | None:
    """The smallest string above every string that starts with `prefix`, in code point order; None
    when there is none (a prefix of nothing but the last code point)."""
    head = prefix.rstrip(chr(_MAX))
    if not head:
        return None
    following = ord(head[-1]) + 1
    if following in _SURROGATES:
        following = _SURROGATES.stop
    return head[:-1] + chr(following)


def starts_with(key: sa.ColumnElement[Any], prefix: str) -> sa.ColumnElement[bool]:
    """`key` (a column, or an expression such as lower(model)) begins with `prefix`: a range that an
    index of shared.tables on `bytewise(key)` answers."""
    lowest = bytewise(key)
    above = successor(prefix)
    if above is None:
        return lowest >= prefix
    return sa.and_(lowest >= prefix, bytewise(key) < above)


def one_of(expr: sa.ColumnElement[Any], subquery: sa.ScalarSelect[Any], *, dialect: str) -> sa.ColumnElement[bool]:
    """`expr IN (subquery)`; on PostgreSQL `expr = ANY(ARRAY(subquery))`, which an index answers inside
    an OR (the array is built once, first), where IN would become a hashed filter over every row."""
    if dialect == "postgresql":
        return expr == sa.any_(sa.func.array(subquery))
    return expr.in_(subquery)
