"""Token issue and verification (SPEC §3). The verifier is the only code that decodes a JWT: keys come
from the ring by `kid` only, the key pins the algorithm, `typ` pins the token kind. PyJWT signs and is
the test oracle; verification talks to `cryptography` directly with keys prepared once, because PyJWT
re-parses and re-prepares on every call (PERF §1)."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shared.errors import InvalidTokenError
from shared.keys import KeyRing

log = logging.getLogger("handshake.tokens")

MAX_TOKEN_BYTES = 8 * 1024
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_B64_TABLE = bytes.maketrans(b"-_", b"+/")
# Headers that would let a token name its own key (RFC 8725 §3.10): never honoured, always refused.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit"})
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_SHA256 = hashes.SHA256()
_PKCS1 = padding.PKCS1v15()


class TokenKind(StrEnum):
    ACCESS = "access"
    DEVICE = "device"
    EXCHANGED = "exchanged"


# The claim that marks an access token as good only for enrolling a second factor (SPEC §12).
MFA_ENROLMENT_CLAIM = "mfa_enrolment"

TYP = {TokenKind.ACCESS: "at+jwt", TokenKind.DEVICE: "device+jwt", TokenKind.EXCHANGED: "at+jwt"}


class UnknownKeyError(InvalidTokenError):
    """The token names a kid the ring does not hold (a remote key set may re-fetch on it)."""


@dataclass(frozen=True, slots=True)
class Claims:
    kind: TokenKind
    sub: str
    exp: int
    iat: int
    jti: str
    kid: str
    aud: str
    sid: str | None = None
    role: str | None = None
    nonce: str | None = None
    # An access token of a user who must enrol a second factor first (SPEC §12): good only on the
    # enrolment routes. Read from the token, so the check costs no database read.
    mfa_enrolment: bool = False
    payload: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _reject(reason: str, *args: object) -> InvalidTokenError:
    log.info("token refused: " + reason, *args)
    return InvalidTokenError()


def _b64decode(segment: str) -> bytes:
    # The shape regex already limited the alphabet; a length of 4n+1 is never valid base64.
    raw = segment.encode("ascii")
    try:
        return binascii.a2b_base64(raw.translate(_B64_TABLE) + b"=" * (-len(raw) % 4), strict_mode=True)
    except binascii.Error:
        raise _reject("bad base64") from None


_B64_VALUE = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
# For a segment of length 4n+2 the last character carries 4 unused bits; for 4n+3, 2.
_UNUSED_BITS_MASK = {0: 0, 2: 0b1111, 3: 0b11}


def _canonical(segment: str) -> bool:
    """Unused trailing bits must be zero: one signature has exactly one spelling (PyJWT ≥ 2.14 agrees).
    Only the last character can carry them, so only it is looked at."""
    return _B64_VALUE[segment[-1]] & _UNUSED_BITS_MASK.get(len(segment) % 4, 0) == 0


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        raise _reject("bad json") from None
    if not isinstance(value, dict):
        raise _reject("json is not an object")
    return value


def _int_claim(payload: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise _reject("missing %s", name)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject("%s is not a number", name)
    return int(value)


class Verifier:
    """Verifies signatures and claims. Revocation is the caller's next step (shared.auth)."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str,
        audience: str,
        leeway: int = 30,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ring = ring
        self.issuer = issuer
        self.audience = audience
        self.leeway = min(leeway, 30)
        self.cache_size = cache_size
        self.clock = clock
        # Exact token string -> verified claims. A different spelling of the same token simply misses.
        self._cache: dict[str, Claims] = {}

    def clear_cache(self) -> None:
        self._cache.clear()

    def verify(self, token: str, kind: TokenKind, *, audience: str | None = None) -> Claims:
        now = self.clock()
        claims = self._cache.get(token)
        if claims is None or claims.kind is not kind:
            claims = self._verify_signed(token, kind, audience or self.audience, int(now))
            if self.cache_size:
                if len(self._cache) >= self.cache_size:
                    del self._cache[next(iter(self._cache))]
                self._cache[token] = claims
        elif claims.kid not in self.ring.by_kid:
            # Its key was revoked after we cached it.
            self._cache.pop(token, None)
            raise _reject("key %s left the ring", claims.kid)
        elif claims.aud != (audience or self.audience):
            raise _reject("wrong audience")
        # Refused from exp + leeway on (RFC 7519 §4.1.4), to the fraction of a second.
        if now >= claims.exp + self.leeway:
            self._cache.pop(token, None)
            raise _reject("expired")
        return claims

    def _verify_signed(self, token: str, kind: TokenKind, audience: str, now: int) -> Claims:
        if len(token) > MAX_TOKEN_BYTES or not _SHAPE.fullmatch(token):
            raise _reject("not a compact JWS")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(_b64decode(header_b64))
        if _FORBIDDEN_HEADERS.intersection(header):
            raise _reject("forbidden header")
        kid = header.get("kid")
        key = self.ring.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None or not isinstance(kid, str):
            raise UnknownKeyError()
        if header.get("alg") != key.alg:
            raise _reject("alg %r differs from key %s", header.get("alg"), kid)
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != TYP[kind]:
            raise _reject("typ %r is not %s", typ, TYP[kind])
        signature = _b64decode(signature_b64)
        if not _canonical(signature_b64):
            raise _reject("non-canonical signature")
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        if not _signature_ok(key.alg, key.public, key.secret, signing_input, signature):
            raise _reject("bad signature")
        payload = _json_object(_b64decode(payload_b64))
        return self._claims(payload, kind, kid, audience, now)

    def _claims(self, payload: dict[str, Any], kind: TokenKind, kid: str, audience: str, now: int) -> Claims:
        if payload.get("iss") != self.issuer:
            raise _reject("wrong issuer")
        aud = payload.get("aud")
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise _reject("wrong audience")
        exp = _int_claim(payload, "exp", required=True)
        iat = _int_claim(payload, "iat", required=True)
        nbf = _int_claim(payload, "nbf", required=False)
        assert exp is not None and iat is not None
        if now >= exp + self.leeway:
            raise _reject("expired")
        if iat > now + self.leeway:
            raise _reject("issued in the future")
        if nbf is not None and nbf > now + self.leeway:
            raise _reject("not yet valid")
        sub, jti = payload.get("sub"), payload.get("jti")
        if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not jti:
            raise _reject("missing sub or jti")
        sid, role, nonce = payload.get("sid"), payload.get("role"), payload.get("nonce")
        if kind is not TokenKind.DEVICE and not isinstance(sid, str):
            raise _reject("user token without sid")
        return Claims(
            kind=kind,
            sub=sub,
            exp=exp,
            iat=iat,
            jti=jti,
            kid=kid,
            aud=audience,
            sid=sid if isinstance(sid, str) else None,
            role=role if isinstance(role, str) else None,
            nonce=nonce if isinstance(nonce, str) else None,
            mfa_enrolment=payload.get(MFA_ENROLMENT_CLAIM) is True,
            payload=payload,
        )


def _signature_ok(alg: str, public: Any, secret: bytes | None, signing_input: bytes, signature: bytes) -> bool:
    try:
        if alg == "ES256":
            if len(signature) != 64:
                return False
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
        elif alg == "EdDSA":
            assert isinstance(public, ed25519.Ed25519PublicKey)
            public.verify(signature, signing_input)
        elif alg == "RS256":
            assert isinstance(public, rsa.RSAPublicKey)
            public.verify(signature, signing_input, _PKCS1, _SHA256)
        elif alg == "HS256":
            if not secret:
                return False
            return hmac.compare_digest(hmac.new(secret, signing_input, hashlib.sha256).digest(), signature)
        else:
            return False
    except InvalidSignature:
        return False
    return True


class Issuer:
    """Signs our tokens with the ring's current signing key."""

    def __init__(self, ring: KeyRing, *, issuer: str, audience: str, clock: Callable[[], float] = time.time) -> None:
        self.ring = ring
        self.issuer = issuer
        self.audience = audience
        self.clock = clock

    def sign(self, claims: dict[str, Any], *, typ: str, ttl: int, audience: str | None = None) -> tuple[str, int]:
        key = self.ring.signing
        if key is None:
            raise RuntimeError("the key ring has no signing key")
        now = int(self.clock())
        payload = {
            "iss": self.issuer,
            "aud": audience or self.audience,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        token = jwt.encode(payload, key.signing_material, algorithm=key.alg, headers={"kid": key.kid, "typ": typ})
        return token, payload["exp"]

    def access(
        self,
        *,
        user_id: str,
        sid: str,
        role: str,
        ttl: int,
        client_id: str | None = None,
        mfa_enrolment: bool = False,
    ) -> tuple[str, int]:
        claims: dict[str, Any] = {"sub": user_id, "sid": sid, "role": role}
        if client_id is not None:  # RFC 9068 §2.2: the OAuth client the session was issued to
            claims["client_id"] = client_id
        if mfa_enrolment:
            claims[MFA_ENROLMENT_CLAIM] = True
        return self.sign(claims, typ=TYP[TokenKind.ACCESS], ttl=ttl)

    def device(self, *, uid: str, ttl: int) -> tuple[str, int]:
        return self.sign({"sub": uid}, typ=TYP[TokenKind.DEVICE], ttl=ttl)

    def exchanged(self, *, user_id: str, sid: str, audience: str, nonce: str | None, ttl: int) -> tuple[str, int]:
        claims: dict[str, Any] = {"sub": user_id, "sid": sid}
        if nonce is not None:
            claims["nonce"] = nonce
        return self.sign(claims, typ=TYP[TokenKind.EXCHANGED], ttl=ttl, audience=audience)


def peek_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and payload without any check: only to route introspection, never to trust."""
    try:
        return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})
    except Exception:
        return None
