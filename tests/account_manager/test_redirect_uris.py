"""Redirect URIs (RFC 6749 §3.1.2, RFC 8252 §7): which may be registered, and which requested URI
matches a registered one. Pure functions, table-driven."""

from __future__ import annotations

import pytest

from account_manager.redirect_uris import RedirectUriError, check, form_action_source, matches

REGISTRABLE = [
    "http://127.0.0.1/callback",
    "http://127.0.0.1:8080/callback",
    "http://[::1]/callback",
    "http://localhost/callback",
    "https://app.example.com/oauth/callback",
    "https://App.Example.com/cb?tenant=1",
    "com.example.lamp:/oauth2redirect",
    "com.example.lamp://callback",
]
REFUSED = [
    "",
    "http://app.example.com/callback",  # plain http beyond the loopback
    "https://app.example.com/cb#fragment",
    "https://user@app.example.com/cb",
    "javascript:alert(1)",
    "data:text/html,<script>",
    "file:///etc/passwd",
    "myapp:/callback",  # a custom scheme that is no reverse domain name
    "HTTPS://app.example.com/cb",
    "https:///cb",
    "https://app.example.com:99999/cb",
    "https://app example.com/cb",
    'https://app.example.com/c"b',
    "https://app.example.com/c;b",
    "https://app.example.com/c\\b",
    "https://" + "a" * 2050 + ".com/",
]


@pytest.mark.parametrize("uri", REGISTRABLE)
def test_a_native_or_web_redirect_uri_may_be_registered(uri: str) -> None:
    assert check(uri) == uri


@pytest.mark.parametrize("uri", REFUSED)
def test_an_unsafe_redirect_uri_may_not_be_registered(uri: str) -> None:
    with pytest.raises(RedirectUriError):
        check(uri)


MATCHES = [
    (["https://app.example.com/cb"], "https://app.example.com/cb", True),
    (["https://app.example.com/cb"], "https://app.example.com/cb/", False),
    (["https://app.example.com/cb"], "https://app.example.com:443/cb", False),
    (["https://app.example.com/cb"], "https://app.example.com/cb?x=1", False),
    (["http://127.0.0.1/cb"], "http://127.0.0.1:51004/cb", True),
    (["http://127.0.0.1:8080/cb"], "http://127.0.0.1:9/cb", True),
    (["http://[::1]/cb"], "http://[::1]:51004/cb", True),
    (["http://127.0.0.1/cb"], "http://[::1]:51004/cb", False),
    (["http://127.0.0.1/cb"], "http://localhost:51004/cb", False),
    (["http://127.0.0.1/cb"], "http://127.0.0.1:51004/cb2", False),
    (["http://127.0.0.1/cb"], "http://127.0.0.1:51004/cb?x=1", False),
    (["http://127.0.0.1/cb"], "http://127.0.0.1:51004@evil.example/cb", False),
    (["http://127.0.0.1/cb"], "HTTP://127.0.0.1:51004/cb", False),
    (["http://127.0.0.1/cb"], "https://127.0.0.1:51004/cb", False),
    (["com.example.app:/cb"], "com.example.app:/cb", True),
    (["com.example.app:/cb"], "com.example.app:/cb2", False),
    (["com.example.app:/cb"], "COM.EXAMPLE.APP:/cb", False),
]


@pytest.mark.parametrize(("registered", "requested", "expected"), MATCHES)
def test_a_requested_uri_matches_exactly_or_a_loopback_on_any_port(
    registered: list[str], requested: str, expected: bool
) -> None:
    assert matches(registered, requested) is expected


@pytest.mark.parametrize(
    ("uri", "source"),
    [
        ("http://127.0.0.1:51004/cb", "http://127.0.0.1:51004"),
        ("https://app.example.com/cb", "https://app.example.com"),
        ("com.example.app:/cb", "com.example.app:"),
    ],
)
def test_the_login_form_may_end_at_the_redirect_uris_origin_or_scheme(uri: str, source: str) -> None:
    assert form_action_source(uri) == source
