"""Forged and misused tokens get the same answer at every door (SECURITY.md, SPEC §3): 401 invalid_token
on the HTTP API under both schemes (`Bearer` and `JWT`), and `{"active": false}` from introspection.
Each case starts from the claims of a real, live session and changes one thing only; the positive
control (the same claims, signed properly) proves that the refusals are not vacuous."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from shared.settings import Settings
from shared.testing import forge, signing_key
from tests.conftest import Users, bearer

INACTIVE = {"active": False}
DEVICE_UID = "HSFORGED000000000001"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unverified_payload(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


@dataclass(frozen=True)
class Scene:
    """A real user with a live session (whose claims every case starts from), and the material the
    misuse cases need: its refresh token, a logged-out session of the same user, an exchanged token."""

    settings: Settings
    claims: dict[str, Any]
    refresh_token: str
    dead_sid: str
    exchanged_token: str
    victim_id: str
    attacker: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @property
    def kid(self) -> str:
        return str(signing_key(self.settings.keys_dir).kid)

    def forge(self, *, claims: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """A token signed with the server's own key: the live session's claims plus `claims`."""
        options: dict[str, Any] = {"issuer": self.settings.issuer, "audience": self.settings.audience, **kwargs}
        return forge(self.settings.keys_dir, claims={**self.claims, **(claims or {})}, **options)

    def good_payload(self) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "iat": now,
            "exp": now + 300,
            "jti": f"hand-{now}",
            **self.claims,
        }

    def unsigned(self, alg: str) -> str:
        header = {"alg": alg, "typ": "at+jwt", "kid": self.kid}
        return f"{segment(header)}.{segment(self.good_payload())}."

    def hs256_with_public_pem(self) -> str:
        # PyJWT itself refuses an asymmetric key as an HMAC secret, so the token is made by hand.
        public = signing_key(self.settings.keys_dir).public
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = f"{segment({'alg': 'HS256', 'typ': 'at+jwt', 'kid': self.kid})}.{segment(self.good_payload())}"
        signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"

    def tampered(self) -> str:
        header, payload, signature = self.forge().split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["sub"] = self.victim_id
        return f"{header}.{segment(claims)}.{signature}"

    def stripped(self) -> str:
        header, payload, _ = self.forge().split(".")
        return f"{header}.{payload}."

    def truncated(self) -> str:
        header, payload, signature = self.forge().split(".")
        return f"{header}.{payload}.{signature[: len(signature) // 2]}"

    def by_attacker(self, **headers: Any) -> str:
        """Signed by a key of the attacker's, which the token itself points to."""
        all_headers = {"kid": "attacker-key", "typ": "at+jwt", **headers}
        return jwt.encode(self.good_payload(), self.attacker, algorithm="ES256", headers=all_headers)

    def embedded_jwk(self) -> str:
        jwk = ECAlgorithm.to_jwk(self.attacker.public_key(), as_dict=True)
        # The ring's own kid: a verifier that prefers the embedded key over the ring would accept it.
        return self.by_attacker(kid=self.kid, jwk=jwk)

    def device_token(self) -> str:
        return forge(
            self.settings.keys_dir,
            claims={"sub": DEVICE_UID},
            drop=("sid",),
            typ="device+jwt",
            issuer=self.settings.issuer,
            audience=self.settings.audience,
        )


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Scene], str]
    # What introspection says: {"active": false} for anything forged or malformed; a genuine token of
    # another kind is reported as what it is (SPEC §4: token_use access, refresh, device or exchanged).
    token_use: str | None = None
    accepted: bool = False


def _now() -> int:
    return int(time.time())


CASES = [
    Case("positive control: real claims, no defect", lambda s: s.forge(), token_use="access", accepted=True),
    Case("alg none", lambda s: s.unsigned("none")),
    Case("alg None", lambda s: s.unsigned("None")),
    Case("HS256 keyed with the ES256 public key PEM", lambda s: s.hs256_with_public_pem()),
    Case("payload tampered after signing (sub)", lambda s: s.tampered()),
    Case("signature stripped", lambda s: s.stripped()),
    Case("signature truncated", lambda s: s.truncated()),
    Case("unknown kid", lambda s: s.forge(headers={"kid": "no-such-kid"})),
    Case("kid path traversal", lambda s: s.forge(headers={"kid": "../../etc/passwd"})),
    Case("kid SQL injection", lambda s: s.forge(headers={"kid": "' OR 1=1 --"})),
    Case("jku header", lambda s: s.by_attacker(jku="https://attacker.example/jwks.json")),
    Case("x5u header", lambda s: s.by_attacker(x5u="https://attacker.example/cert.pem")),
    Case("jwk header with the attacker's key", lambda s: s.embedded_jwk()),
    Case("expired an hour ago", lambda s: s.forge(claims={"iat": _now() - 4500, "exp": _now() - 3600})),
    Case("nbf an hour ahead", lambda s: s.forge(claims={"nbf": _now() + 3600})),
    Case("no exp", lambda s: s.forge(drop=("exp",))),
    Case("wrong iss", lambda s: s.forge(issuer="https://evil.example")),
    Case("wrong aud", lambda s: s.forge(audience="someone-else")),
    Case("typ JWT", lambda s: s.forge(typ="JWT")),
    Case("typ missing", lambda s: s.forge(headers={"typ": None})),
    Case("device token (typ device+jwt)", lambda s: s.device_token(), token_use="device"),
    Case("exchanged token (aud partner.example)", lambda s: s.exchanged_token, token_use="exchanged"),
    Case("refresh token as bearer", lambda s: s.refresh_token, token_use="refresh"),
    Case("oversized (> 8 KiB)", lambda s: s.forge(claims={"pad": "x" * 9000})),
    Case("garbage abc", lambda s: "abc"),
    Case("garbage a.b.c", lambda s: "a.b.c"),
    Case("empty", lambda s: ""),
    Case("sid of a logged-out session", lambda s: s.forge(claims={"sid": s.dead_sid})),
]


@pytest.fixture
async def scene(client: httpx.AsyncClient, users: Users, settings: Settings) -> Scene:
    victim, _ = await users.new()
    user, live = await users.new()
    dead = await users.login(user["username"])
    response = await client.post("/v1/auth/logout", headers=bearer(dead))
    assert response.status_code == 204, response.text
    response = await client.post("/v1/auth/exchange", json={"audience": "partner.example"}, headers=bearer(live))
    assert response.status_code == 200, response.text
    claims = unverified_payload(live["access_token"])
    return Scene(
        settings=settings,
        claims={"sub": claims["sub"], "sid": claims["sid"], "role": claims["role"]},
        refresh_token=live["refresh_token"],
        dead_sid=unverified_payload(dead["access_token"])["sid"],
        exchanged_token=response.json()["access_token"],
        victim_id=victim["id"],
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_token_gets_the_same_answer_at_every_door(client: httpx.AsyncClient, scene: Scene, case: Case) -> None:
    token = case.make(scene)
    if case.name.startswith("oversized"):
        assert len(token) > 8 * 1024

    for scheme in ("Bearer", "JWT"):
        response = await client.get("/v1/users/me", headers={"Authorization": f"{scheme} {token}"})
        if case.accepted:
            assert response.status_code == 200, (scheme, response.text)
            assert response.json()["id"] == scene.claims["sub"]
            continue
        assert response.status_code == 401, (scheme, response.status_code, response.text)
        assert response.json()["error"] == "invalid_token", (scheme, response.text)
        assert set(response.json()) == {"error", "detail"}
        assert 'error="invalid_token"' in response.headers.get("www-authenticate", ""), (scheme, response.headers)

    # RFC 7662 sends a form; apps send JSON. Both get the same answer.
    as_form = await client.post("/v1/auth/introspect", data={"token": token})
    as_json = await client.post("/v1/auth/introspect", json={"token": token})
    for response in (as_form, as_json):
        assert response.status_code == 200, response.text
        answer = response.json()
        if case.token_use is None:
            assert answer == INACTIVE, answer
        else:
            assert answer["active"] is True, answer
            assert answer["token_use"] == case.token_use, answer
