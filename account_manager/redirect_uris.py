"""Redirect URIs of registered clients (RFC 6749 §3.1.2, RFC 8252 §7): which may be registered, and
whether the one a request names is registered. Matched exactly, except that a loopback URI matches on
any port (a native app listens on whatever port it got). Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

MAX_LENGTH = 2048
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:]+\]", re.IGNORECASE)
# Anything a browser or a header could read twice: spaces, controls, quotes, backslashes, CSP separators.
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\\"'<>;,`]")


class RedirectUriError(ValueError):
    """A URI that may not be registered; the message says why."""


def _split(uri: str) -> SplitResult | None:
    if not uri or len(uri) > MAX_LENGTH or _UNSAFE.search(uri):
        return None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return None
    return parts


def _is_loopback(parts: SplitResult) -> bool:
    return parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS


def check(uri: str) -> str:
    """The URI if it may be registered, else RedirectUriError."""
    parts = _split(uri)
    if parts is None:
        raise RedirectUriError(f"{uri[:80]!r} is not a URI (at most {MAX_LENGTH} characters, no spaces or quotes)")
    if not _SCHEME.fullmatch(uri.split(":", 1)[0]):  # as written: urlsplit folds its case
        raise RedirectUriError(f"{uri[:80]!r}: the scheme must be lower-case")
    if "#" in uri:
        raise RedirectUriError(f"{uri[:80]!r}: a redirect URI has no fragment (RFC 6749 §3.1.2)")
    if "@" in parts.netloc:
        raise RedirectUriError(f"{uri[:80]!r}: a redirect URI has no user information")
    if parts.scheme in ("http", "https"):
        if not parts.hostname or not _HOST.fullmatch(parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc):
            raise RedirectUriError(f"{uri[:80]!r}: not a host name")
        if parts.scheme == "http" and not _is_loopback(parts):
            raise RedirectUriError(f"{uri[:80]!r}: plain http only to a loopback address (127.0.0.1, [::1], localhost)")
        return uri
    # A private-use scheme must be a reverse domain name the app's owner controls (RFC 8252 §7.1): that
    # also rules out javascript:, data:, file: and every other scheme a browser acts on by itself.
    if "." not in parts.scheme:
        raise RedirectUriError(f"{uri[:80]!r}: a custom scheme is a reverse domain name, like com.example.app")
    return uri


def matches(registered: Sequence[str], requested: str) -> bool:
    """Whether `requested` is one of `registered`: the very string, or a registered loopback URI with
    only the port changed (RFC 8252 §7.3)."""
    if requested in registered:
        return _split(requested) is not None
    parts = _split(requested)
    # Only the port may differ: the scheme and host as written (no case folding), path and query.
    if parts is None or not requested.startswith("http://") or not _is_loopback(parts):
        return False
    if "@" in parts.netloc or "#" in requested:
        return False
    for uri in registered:
        known = _split(uri)
        if (
            known is not None
            and _is_loopback(known)
            and _host(known) == _host(parts)
            and known.path == parts.path
            and known.query == parts.query
        ):
            return True
    return False


def _host(parts: SplitResult) -> str:
    """The host as written in the URI, without its port."""
    return parts.netloc.rsplit(":", 1)[0] if parts.port is not None or parts.netloc.endswith(":") else parts.netloc


def form_action_source(uri: str) -> str:
    """The Content-Security-Policy source that lets the hosted login form end at this (matched)
    redirect URI: its origin, or its scheme for a custom one."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"
