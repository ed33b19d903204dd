"""The verifier against SPEC §3, for every algorithm we sign with: good tokens match PyJWT (the oracle),
and every forged, tampered, confused or malformed token is refused with InvalidTokenError only.
Tokens are forged with PyJWT where it will, and crafted from raw base64 and JSON where it will not."""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import shared.tokens
from shared.errors import InvalidTokenError
from shared.keys import KEY_SUFFIX, Key, KeyDirectory, KeyRing, generate_private_key, hmac_key
from shared.tokens import Claims, Issuer, TokenKind, UnknownKeyError, Verifier

ALGS = ("ES256", "EdDSA", "RS256", "HS256")
ASYMMETRIC = ("ES256", "EdDSA", "RS256")
ISSUER = "https://handshake.test"
AUDIENCE = "handshake.test"
PARTNER = "partner.example"
LEEWAY = 30
HS256_SECRET = "test-only-hmac-secret-" + "0123456789abcdef" * 2
IMPOSTOR_SECRET = "impostor-hmac-secret-" + "fedcba9876543210" * 2
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
DROP = object()  # a claim or header value meaning "leave this member out"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class FakeClock:
    """A clock the test moves by hand; starts on a whole second so PyJWT's real clock agrees with it."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """One algorithm's key, ring, issuer and verifier, plus the means to forge tokens with that key."""

    alg: str
    key: Key
    impostor: Key  # same kid and alg, other key material: tells a cache hit from a signature check
    directory: KeyDirectory | None
    ring: KeyRing
    clock: FakeClock
    issuer: Issuer
    verifier: Verifier

    @property
    def now(self) -> int:
        return int(self.clock())

    @property
    def verifying_material(self) -> Any:
        return self.key.secret if self.alg == "HS256" else self.key.public

    def payload(self, changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
        base: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": self.now,
            "exp": self.now + 300,
            "jti": secrets.token_urlsafe(12),
            "sub": "user-1",
            "sid": "session-1",
            "role": "user",
        }
        merged = {**base, **(changes or {})}
        return {name: value for name, value in merged.items() if value is not DROP}

    def forge(self, changes: Mapping[str, Any] | None = None, *, headers: Mapping[str, Any] | None = None) -> str:
        """A token signed with the real key through PyJWT, with whatever claims and headers we like."""
        header = {"kid": self.key.kid, "typ": "at+jwt", **(headers or {})}
        kept = {name: value for name, value in header.items() if value is not DROP}
        if header["typ"] is DROP:
            kept["typ"] = None  # PyJWT's way to leave `typ` out
        return jwt.encode(self.payload(changes), self.key.signing_material, algorithm=self.alg, headers=kept)

    def sign(self, signing_input: bytes) -> bytes:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        return algorithm.sign(signing_input, algorithm.prepare_key(self.key.signing_material))

    def craft(self, header: Mapping[str, Any], payload: Mapping[str, Any] | bytes) -> str:
        """A token built from raw JSON and base64, signed with the real key whatever its header says."""
        body = payload if isinstance(payload, bytes) else dumps(payload)
        signing_input = f"{b64(dumps(header))}.{b64(body)}"
        return f"{signing_input}.{b64(self.sign(signing_input.encode()))}"

    def header(self, **changes: Any) -> dict[str, Any]:
        header = {"alg": self.alg, "kid": self.key.kid, "typ": "at+jwt", **changes}
        return {name: value for name, value in header.items() if value is not DROP}

    def verify(self, token: str, kind: TokenKind = TokenKind.ACCESS, *, audience: str | None = None) -> Claims:
        return self.verifier.verify(token, kind, audience=audience)

    def pyjwt_decode(self, token: str, *, audience: str = AUDIENCE) -> dict[str, Any]:
        decoded: dict[str, Any] = jwt.decode(
            token,
            self.verifying_material,
            algorithms=[self.alg],
            audience=audience,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
        return decoded

    def pyjwt_accepts(self, token: str) -> bool:
        try:
            self.pyjwt_decode(token)
        except jwt.InvalidTokenError:
            return False
        return True

    def swap_key_material(self) -> None:
        """Keep the kid in the ring but change the key behind it: only a cache hit still verifies."""
        self.ring.replace([self.impostor])


@dataclass(frozen=True)
class StoredKeys:
    files: dict[str, Path]  # alg -> key file
    impostors: dict[str, Key]


@pytest.fixture(scope="module")
def stored_keys(tmp_path_factory: pytest.TempPathFactory) -> StoredKeys:
    """Keys generated once per module (RSA generation is slow); each test copies what it needs."""
    files: dict[str, Path] = {}
    impostors: dict[str, Key] = {}
    for alg in ASYMMETRIC:
        directory = KeyDirectory(tmp_path_factory.mktemp("store") / "keys")
        key = directory.add(alg)
        files[alg] = directory.path / f"{key.kid}{KEY_SUFFIX}"
        other = generate_private_key(alg)
        impostors[alg] = dataclasses.replace(key, private=other, public=other.public_key())
    real_hmac = hmac_key(HS256_SECRET)
    impostors["HS256"] = dataclasses.replace(real_hmac, secret=IMPOSTOR_SECRET.encode())
    return StoredKeys(files, impostors)


@pytest.fixture(params=ALGS)
def alg(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def rig(alg: str, stored_keys: StoredKeys, tmp_path: Path) -> Rig:
    """A ring loaded from a key directory in tmp_path (HS256: from the shared secret, as the platform does)."""
    directory: KeyDirectory | None = None
    if alg == "HS256":
        ring = KeyRing([hmac_key(HS256_SECRET)])
    else:
        directory = KeyDirectory(tmp_path / "keys")
        directory.path.mkdir(mode=0o700)
        shutil.copy2(stored_keys.files[alg], directory.path)
        ring = KeyRing(directory.load())
    assert ring.signing is not None and ring.signing.alg == alg
    clock = FakeClock()
    return Rig(
        alg=alg,
        key=ring.signing,
        impostor=stored_keys.impostors[alg],
        directory=directory,
        ring=ring,
        clock=clock,
        issuer=Issuer(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock),
        verifier=Verifier(ring, issuer=ISSUER, audience=AUDIENCE, leeway=LEEWAY, clock=clock),
    )


def other_verifier(rig: Rig, **options: Any) -> Verifier:
    return Verifier(rig.ring, issuer=ISSUER, audience=AUDIENCE, clock=rig.clock, **{"leeway": LEEWAY, **options})


# --- good tokens --------------------------------------------------------------------------------------------


def _issue(rig: Rig, kind: TokenKind) -> tuple[str, str]:
    if kind is TokenKind.DEVICE:
        return rig.issuer.device(uid="device-1", ttl=3600)[0], AUDIENCE
    if kind is TokenKind.EXCHANGED:
        token, _ = rig.issuer.exchanged(user_id="user-1", sid="session-1", audience=PARTNER, nonce="n-1", ttl=300)
        return token, PARTNER
    return rig.issuer.access(user_id="user-1", sid="session-1", role="admin", ttl=900)[0], AUDIENCE


@pytest.mark.parametrize("kind", list(TokenKind))
def test_issued_token_verifies_and_matches_pyjwt(rig: Rig, kind: TokenKind) -> None:
    token, audience = _issue(rig, kind)

    claims = rig.verify(token, kind, audience=audience)

    expected = rig.pyjwt_decode(token, audience=audience)
    assert claims.payload == expected
    assert (claims.kind, claims.sub, claims.exp, claims.iat, claims.jti, claims.aud) == (
        kind,
        expected["sub"],
        expected["exp"],
        expected["iat"],
        expected["jti"],
        audience,
    )
    assert (claims.sid, claims.role, claims.nonce) == (expected.get("sid"), expected.get("role"), expected.get("nonce"))
    assert claims.kid == rig.key.kid == jwt.get_unverified_header(token)["kid"]


def test_typ_is_compared_case_insensitively(rig: Rig) -> None:
    # RFC 7515 §4.1.9: media type names are case-insensitive.
    assert rig.verify(rig.forge(headers={"typ": "AT+JWT"})).sub == "user-1"


# --- headers ------------------------------------------------------------------------------------------------

FORBIDDEN_HEADERS: dict[str, dict[str, Any]] = {
    "jku": {"jku": "https://attacker.example/jwks.json"},
    "x5u": {"x5u": "https://attacker.example/cert.pem"},
    "jwk": {"jwk": {"kty": "oct", "k": b64(b"attacker"), "kid": "attacker"}},
    "x5c": {"x5c": ["MIIBszCCAVmgAwIBAgIUQ=="]},
    "x5t": {"x5t": b64(b"0" * 20)},
    "crit": {"crit": ["exp"]},
}


@pytest.mark.parametrize("headers", FORBIDDEN_HEADERS.values(), ids=FORBIDDEN_HEADERS.keys())
def test_token_naming_its_own_key_source_is_refused(rig: Rig, headers: dict[str, Any]) -> None:
    # Signed with the real key: the header alone must be enough to refuse (RFC 8725 §3.10).
    with pytest.raises(InvalidTokenError):
        rig.verify(rig.forge(headers=headers))


BAD_KIDS: dict[str, Any] = {
    "unknown": "no-such-kid",
    "path": "../../etc/passwd",
    "path_after_real_kid": "{kid}/../../etc/passwd",
    "sql": "' OR 1=1 --",
    "nul": "{kid}\u0000",
    "empty": "",
    "missing": DROP,
    "null": None,
    "number": 1,
    "list": ["{kid}"],
}


@pytest.mark.parametrize("kid", BAD_KIDS.values(), ids=BAD_KIDS.keys())
def test_token_with_a_kid_outside_the_ring_is_refused_as_unknown_key(rig: Rig, kid: Any) -> None:
    if isinstance(kid, str):
        kid = kid.format(kid=rig.key.kid)
    elif isinstance(kid, list):
        kid = [rig.key.kid]
    with pytest.raises(UnknownKeyError):
        rig.verify(rig.craft(rig.header(kid=kid), rig.payload()))


WRONG_TYPS: dict[str, Any] = {
    "jwt": "JWT",
    "device": "device+jwt",
    "padded": "at+jwt ",
    "missing": DROP,
    "null": None,
    "list": ["at+jwt"],
    "number": 1,
}


@pytest.mark.parametrize("typ", WRONG_TYPS.values(), ids=WRONG_TYPS.keys())
def test_access_token_with_wrong_or_missing_typ_is_refused(rig: Rig, typ: Any) -> None:
    with pytest.raises(InvalidTokenError):
        rig.verify(rig.craft(rig.header(typ=typ), rig.payload()))


# --- algorithm: pinned by the key ---------------------------------------------------------------------------

CLAIMED_ALGS = ["none", "None", "NONE", "nOnE", "", None, DROP, *ALGS, "ES384", "PS256", "HS512", "es256", "eddsa"]


@pytest.mark.parametrize("claimed", CLAIMED_ALGS, ids=[repr(a) if a is not DROP else "missing" for a in CLAIMED_ALGS])
def test_token_whose_alg_differs_from_its_key_is_refused(rig: Rig, claimed: Any) -> None:
    if claimed == rig.alg:
        pytest.skip("that is the key's own algorithm")
    # Signed with the real key, so nothing but the `alg` header is wrong.
    with pytest.raises(InvalidTokenError):
        rig.verify(rig.craft(rig.header(alg=claimed), rig.payload()))


def test_unsigned_token_is_refused(rig: Rig) -> None:
    unsigned = jwt.encode(rig.payload(), "", algorithm="none", headers={"kid": rig.key.kid, "typ": "at+jwt"})
    assert unsigned.endswith(".")
    with pytest.raises(InvalidTokenError):
        rig.verify(unsigned)


def _public_key_text(key: Key, form: str) -> bytes:
    """The public key as text a verifier might hold: PEM (SPKI, PKCS#1) or JWK/JWKS JSON."""
    assert key.public is not None
    if form == "pkcs1_pem":
        if not isinstance(key.public, rsa.RSAPublicKey):
            pytest.skip("PKCS#1 is for RSA keys only")
        return key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    spki = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "spki_pem": spki,
        "spki_pem_stripped": spki.strip(),
        "jwk_json": json.dumps(key.public_jwk()).encode(),
        "jwk_json_compact": dumps(key.public_jwk()),
        "jwks_json": dumps({"keys": [key.public_jwk()]}),
    }[form]


def _hs256(rig: Rig, secret: bytes, *, kid: str) -> str:
    signing_input = f"{b64(dumps(rig.header(alg='HS256', kid=kid)))}.{b64(dumps(rig.payload()))}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), 'sha256').digest())}"


PUBLIC_KEY_FORMS = ["spki_pem", "spki_pem_stripped", "pkcs1_pem", "jwk_json", "jwk_json_compact", "jwks_json"]


@pytest.mark.parametrize("form", PUBLIC_KEY_FORMS)
@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_hs256_token_keyed_with_the_public_key_text_is_refused(rig: Rig, form: str) -> None:
    # The classic confusion: a verifier that lets the token pick HS256 would use the public key as the secret.
    token = _hs256(rig, _public_key_text(rig.key, form), kid=rig.key.kid)
    with pytest.raises(InvalidTokenError):
        rig.verify(token)


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_hs256_token_naming_an_asymmetric_kid_is_refused_when_the_ring_also_holds_an_hmac_key(rig: Rig) -> None:
    hmac_secret = hmac_key(HS256_SECRET)
    rig.ring.replace([rig.key, hmac_secret])
    assert rig.verify(_hs256(rig, HS256_SECRET.encode(), kid=hmac_secret.kid)).sub == "user-1"  # the ring is mixed
    for secret in (_public_key_text(rig.key, "spki_pem"), HS256_SECRET.encode()):
        with pytest.raises(InvalidTokenError):
            rig.verify(_hs256(rig, secret, kid=rig.key.kid))


# --- signature ----------------------------------------------------------------------------------------------


def _flip_unused_low_bits(segment: str) -> str:
    # The last base64 character carries 2 or 4 bits that encode nothing; a decoder that ignores them
    # accepts a second spelling of the same signature.
    unused = len(segment) * 6 - len(unb64(segment)) * 8
    assert unused > 0
    last = B64_ALPHABET.index(segment[-1])
    return segment[:-1] + B64_ALPHABET[last ^ ((1 << unused) - 1)]


def _flip_bit(segment: str, index: int) -> str:
    raw = bytearray(unb64(segment))
    raw[index] ^= 0x01
    return b64(bytes(raw))


TAMPERINGS: dict[str, Callable[[str, str, str, str], str]] = {
    # (header, payload, signature, another token's signature) -> token
    "payload_tampered": lambda h, p, s, o: f"{h}.{b64(dumps({**json.loads(unb64(p)), 'role': 'admin'}))}.{s}",
    "header_tampered": lambda h, p, s, o: f"{b64(dumps({**json.loads(unb64(h)), 'cty': 'x'}))}.{p}.{s}",
    "signature_stripped": lambda h, p, s, o: f"{h}.{p}.",
    "signature_and_dot_stripped": lambda h, p, s, o: f"{h}.{p}",
    "signature_truncated_by_1": lambda h, p, s, o: f"{h}.{p}.{s[:-1]}",
    "signature_truncated_by_2": lambda h, p, s, o: f"{h}.{p}.{s[:-2]}",
    "signature_truncated_by_4": lambda h, p, s, o: f"{h}.{p}.{s[:-4]}",
    "signature_halved": lambda h, p, s, o: f"{h}.{p}.{b64(unb64(s)[: len(unb64(s)) // 2])}",
    "signature_extended": lambda h, p, s, o: f"{h}.{p}.{b64(unb64(s) + bytes(1))}",
    "signature_bit_flipped": lambda h, p, s, o: f"{h}.{p}.{_flip_bit(s, len(unb64(s)) // 2)}",
    "signature_zeroed": lambda h, p, s, o: f"{h}.{p}.{b64(bytes(len(unb64(s))))}",
    "signature_of_another_token": lambda h, p, s, o: f"{h}.{p}.{o}",
    "signature_non_canonical_base64": lambda h, p, s, o: f"{h}.{p}.{_flip_unused_low_bits(s)}",
    "signature_padded": lambda h, p, s, o: f"{h}.{p}.{s}=",
    "signature_double_padded": lambda h, p, s, o: f"{h}.{p}.{s}==",
    "header_padded": lambda h, p, s, o: f"{h}=.{p}.{s}",
    "payload_padded": lambda h, p, s, o: f"{h}.{p}=.{s}",
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampered_or_respelled_token_is_refused(rig: Rig, tamper: Callable[[str, str, str, str], str]) -> None:
    header, payload, signature = rig.forge().split(".")
    another = rig.forge().split(".")[2]
    token = tamper(header, payload, signature, another)

    with pytest.raises(InvalidTokenError):
        rig.verify(token)


@pytest.mark.parametrize("alg", ["ES256"])
def test_es256_der_signature_is_refused(rig: Rig) -> None:
    # JWS wants r || s (RFC 7518 §3.4), not the DER that cryptography produces.
    header, payload, signature = rig.forge().split(".")
    raw = unb64(signature)
    der = b64(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")))
    with pytest.raises(InvalidTokenError):
        rig.verify(f"{header}.{payload}.{der}")


@pytest.mark.parametrize("alg", ["ES256"])
def test_es256_malleated_signature_verifies_to_the_same_identity(rig: Rig) -> None:
    # (r, n - s) is valid too (SPEC §3): that is why revocation is keyed by jti/sid, never by the token bytes.
    token = rig.issuer.access(user_id="user-1", sid="session-1", role="user", ttl=900)[0]
    header, payload, signature = token.split(".")
    r, s = int.from_bytes(unb64(signature)[:32], "big"), int.from_bytes(unb64(signature)[32:], "big")
    malleated = f"{header}.{payload}.{b64(r.to_bytes(32, 'big') + (P256_ORDER - s).to_bytes(32, 'big'))}"
    assert malleated != token

    assert rig.verify(malleated).jti == rig.verify(token).jti


# --- shape and size -----------------------------------------------------------------------------------------

GARBAGE: dict[str, str] = {
    "empty": "",
    "dot": ".",
    "two_dots": "..",
    "three_dots": "...",
    "two_segments": "a.b",
    "three_short_segments": "a.b.c",
    "four_segments": "a.b.c.d",
    "empty_middle": "a..c",
    "space": " ",
    "spaces_inside": "a b.c d.e f",
    "non_ascii": "ä.ö.ü",
    "cjk": "日本.語.です",
    "emoji": "\U0001f511.\U0001f511.\U0001f511",
    "nul": "\x00.\x00.\x00",
    "json": '{"alg":"none"}',
    "over_8k_of_nothing": "eyJ" * 3000,
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_string_is_refused(rig: Rig, garbage: str) -> None:
    with pytest.raises(InvalidTokenError):
        rig.verify(garbage)


RESPELLINGS: dict[str, Callable[[str], str]] = {
    "leading_space": lambda t: " " + t,
    "trailing_space": lambda t: t + " ",
    "trailing_newline": lambda t: t + "\n",
    "bearer_prefix": lambda t: "Bearer " + t,
    "trailing_dot": lambda t: t + ".",
    "fullwidth_letter": lambda t: t[:5] + "\N{FULLWIDTH LATIN CAPITAL LETTER A}" + t[6:],
    "accented_letter": lambda t: t[:5] + "é" + t[6:],
    "standard_base64_plus": lambda t: t[:5] + "+" + t[6:],
}


@pytest.mark.parametrize("respell", RESPELLINGS.values(), ids=RESPELLINGS.keys())
def test_good_token_wrapped_or_with_foreign_characters_is_refused(rig: Rig, respell: Callable[[str], str]) -> None:
    with pytest.raises(InvalidTokenError):
        rig.verify(respell(rig.forge()))


def _signed_token_of_length(rig: Rig, length: int) -> str:
    """A good token of exactly `length` characters: a filler claim and a filler header member
    (base64 never has a length of 4n+1, so the header shifts the payload's length when needed)."""
    signature_length = len(b64(rig.sign(b"x")))
    for header_filler in range(4):
        header = rig.header(pad="h" * header_filler)
        room = length - len(b64(dumps(header))) - 2 - signature_length
        for filler in range(max(0, room * 3 // 4 - 200), room * 3 // 4 + 4):
            payload = rig.payload({"filler": "x" * filler})
            if len(b64(dumps(payload))) == room:
                token = rig.craft(header, payload)
                assert len(token) == length
                return token
    raise AssertionError(f"cannot build a token of {length} characters")


def test_token_of_exactly_8_kib_is_accepted(rig: Rig) -> None:
    assert rig.verify(_signed_token_of_length(rig, 8192)).sub == "user-1"


def test_token_larger_than_8_kib_is_refused(rig: Rig) -> None:
    for length in (8193, 8194, 64 * 1024):
        with pytest.raises(InvalidTokenError):
            rig.verify(_signed_token_of_length(rig, length))


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("size_limit_lifted", [False, True], ids=["size_limit", "size_limit_lifted"])
@pytest.mark.parametrize("segment", ["header", "payload"])
def test_deeply_nested_json_is_refused_without_recursion_error(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, segment: str, size_limit_lifted: bool
) -> None:
    if size_limit_lifted:
        # 100,000 nested arrays do not fit in 8 KiB: lift the limit so the JSON parser meets them.
        monkeypatch.setattr(shared.tokens, "MAX_TOKEN_BYTES", 10**7)
    nested = b'{"n":' + _nested(100_000) + b"}"
    if segment == "header":
        token = f"{b64(nested)}.{b64(dumps(rig.payload()))}.{b64(b'sig')}"
    else:
        token = rig.craft(rig.header(), nested)

    with pytest.raises(InvalidTokenError):
        rig.verify(token)


def test_nested_json_that_fits_in_8_kib_is_refused_without_recursion_error(rig: Rig) -> None:
    payload = dumps(rig.payload())[:-1] + b',"n":' + _nested(2_500) + b"}"
    token = rig.craft(rig.header(), payload)
    assert len(token) <= 8192
    with pytest.raises(InvalidTokenError):
        rig.verify(token)


NOT_AN_OBJECT: dict[str, bytes] = {
    "array": b"[]",
    "string": b'"claims"',
    "number": b"1",
    "null": b"null",
    "not_json": b"not json",
    "invalid_utf8": b'{"sub":"\xff"}',
    "lone_surrogate": b'{"sub":"\\ud800"}',
    "infinite_number": b'{"exp":1e400}',
}


@pytest.mark.parametrize("payload", NOT_AN_OBJECT.values(), ids=NOT_AN_OBJECT.keys())
def test_signed_payload_that_is_not_a_json_object_is_refused(rig: Rig, payload: bytes) -> None:
    with pytest.raises(InvalidTokenError):
        rig.verify(rig.craft(rig.header(), payload))


# --- claims -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimCase:
    id: str
    changes: Callable[[int], dict[str, Any]]  # now -> claims to set (DROP removes one)
    accepted: bool
    pyjwt_agrees: bool = True  # False where SPEC asks more than PyJWT checks


CLAIM_CASES = [
    ClaimCase("expired_within_leeway_is_accepted", lambda now: {"exp": now - 25}, True),
    ClaimCase("expired_beyond_leeway_is_refused", lambda now: {"exp": now - 31}, False),
    ClaimCase("long_expired_is_refused", lambda now: {"exp": now - 86_400}, False),
    ClaimCase("nbf_in_the_past_is_accepted", lambda now: {"nbf": now - 60}, True),
    ClaimCase("nbf_within_leeway_is_accepted", lambda now: {"nbf": now + 25}, True),
    ClaimCase("nbf_in_the_future_is_refused", lambda now: {"nbf": now + 35}, False),
    ClaimCase("iat_within_leeway_is_accepted", lambda now: {"iat": now + 25}, True),
    ClaimCase("iat_in_the_future_beyond_leeway_is_refused", lambda now: {"iat": now + 35}, False),
    ClaimCase("no_exp_is_refused", lambda now: {"exp": DROP}, False),
    ClaimCase("null_exp_is_refused", lambda now: {"exp": None}, False),
    ClaimCase("exp_as_string_is_refused", lambda now: {"exp": str(now + 300)}, False, pyjwt_agrees=False),
    ClaimCase("exp_as_true_is_refused", lambda now: {"exp": True}, False),
    ClaimCase("exp_as_false_is_refused", lambda now: {"exp": False}, False),
    ClaimCase("exp_as_list_is_refused", lambda now: {"exp": [now + 300]}, False),
    ClaimCase("exp_as_fraction_is_accepted", lambda now: {"exp": now + 300.5}, True),
    ClaimCase("no_iat_is_refused", lambda now: {"iat": DROP}, False),
    ClaimCase("iat_as_string_is_refused", lambda now: {"iat": str(now)}, False, pyjwt_agrees=False),
    ClaimCase("iat_as_true_is_refused", lambda now: {"iat": True}, False, pyjwt_agrees=False),
    ClaimCase("wrong_iss_is_refused", lambda now: {"iss": "https://attacker.example"}, False),
    ClaimCase("no_iss_is_refused", lambda now: {"iss": DROP}, False),
    ClaimCase("wrong_aud_is_refused", lambda now: {"aud": "someone-else"}, False),
    ClaimCase("no_aud_is_refused", lambda now: {"aud": DROP}, False),
    ClaimCase("aud_list_with_ours_is_accepted", lambda now: {"aud": [PARTNER, AUDIENCE]}, True),
    ClaimCase("aud_list_without_ours_is_refused", lambda now: {"aud": [PARTNER]}, False),
    ClaimCase("empty_aud_list_is_refused", lambda now: {"aud": []}, False),
    ClaimCase("no_sub_is_refused", lambda now: {"sub": DROP}, False),
    ClaimCase("numeric_sub_is_refused", lambda now: {"sub": 42}, False),
    ClaimCase("no_jti_is_refused", lambda now: {"jti": DROP}, False),
    ClaimCase("no_sid_in_a_user_token_is_refused", lambda now: {"sid": DROP}, False, pyjwt_agrees=False),
    ClaimCase("extra_claims_are_accepted", lambda now: {"scope": "a b", "ext": {"deep": [1, {"x": None}]}}, True),
]


@pytest.mark.parametrize("case", CLAIM_CASES, ids=[case.id for case in CLAIM_CASES])
def test_claims_are_checked(rig: Rig, case: ClaimCase) -> None:
    token = rig.forge(case.changes(rig.now))

    if case.accepted:
        assert rig.verify(token).payload == json.loads(unb64(token.split(".")[1]))
    else:
        with pytest.raises(InvalidTokenError):
            rig.verify(token)
    # PyJWT, given the same leeway and required claims, is the oracle.
    assert rig.pyjwt_accepts(token) is (case.accepted if case.pyjwt_agrees else True)


def test_leeway_is_capped_at_30_seconds(rig: Rig) -> None:
    lenient = other_verifier(rig, leeway=3600)
    with pytest.raises(InvalidTokenError):
        lenient.verify(rig.forge({"exp": rig.now - 31}), TokenKind.ACCESS)


@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "cached"])
@pytest.mark.parametrize(
    ("leeway", "after_exp"), [(30, 30.0), (30, 30.5), (30, 30.999), (0, 0.0), (0, 0.5)], ids=lambda v: str(v)
)
def test_token_is_refused_from_exp_plus_leeway_on(rig: Rig, leeway: int, after_exp: float, cached: bool) -> None:
    verifier = other_verifier(rig, leeway=leeway)
    token = rig.forge()
    exp = rig.now + 300
    if cached:
        verifier.verify(token, TokenKind.ACCESS)
    rig.clock.now = exp + after_exp
    with pytest.raises(InvalidTokenError):
        verifier.verify(token, TokenKind.ACCESS)


# --- token kinds --------------------------------------------------------------------------------------------


def test_device_token_is_refused_as_access_token(rig: Rig) -> None:
    token, _ = rig.issuer.device(uid="device-1", ttl=3600)
    with pytest.raises(InvalidTokenError):
        rig.verify(token, TokenKind.ACCESS)


def test_access_token_is_refused_as_device_token(rig: Rig) -> None:
    token, _ = rig.issuer.access(user_id="user-1", sid="session-1", role="user", ttl=900)
    with pytest.raises(InvalidTokenError):
        rig.verify(token, TokenKind.DEVICE)


def test_exchanged_token_is_refused_as_access_token(rig: Rig) -> None:
    token, _ = rig.issuer.exchanged(user_id="user-1", sid="session-1", audience=PARTNER, nonce=None, ttl=300)
    with pytest.raises(InvalidTokenError):
        rig.verify(token, TokenKind.ACCESS)


def test_access_token_is_refused_for_a_partner_audience(rig: Rig) -> None:
    token, _ = rig.issuer.access(user_id="user-1", sid="session-1", role="user", ttl=900)
    with pytest.raises(InvalidTokenError):
        rig.verify(token, TokenKind.EXCHANGED, audience=PARTNER)


# --- cache --------------------------------------------------------------------------------------------------


@pytest.fixture
def token(rig: Rig) -> str:
    return rig.issuer.access(user_id="user-1", sid="session-1", role="user", ttl=900)[0]


def test_token_verified_twice_returns_equal_claims(rig: Rig, token: str) -> None:
    first = rig.verify(token)
    second = rig.verify(token)
    assert second == first and second.payload == first.payload


def test_repeated_token_skips_the_signature_check(rig: Rig, token: str) -> None:
    rig.verify(token)
    rig.swap_key_material()
    assert rig.verify(token).sub == "user-1"  # a cache hit: the impostor key would refuse it


def test_verifier_without_cache_checks_the_signature_every_time(rig: Rig, token: str) -> None:
    verifier = other_verifier(rig, cache_size=0)
    verifier.verify(token, TokenKind.ACCESS)
    rig.swap_key_material()
    with pytest.raises(InvalidTokenError):
        verifier.verify(token, TokenKind.ACCESS)


def test_cache_holds_at_most_cache_size_tokens(rig: Rig) -> None:
    verifier = other_verifier(rig, cache_size=2)
    tokens = [rig.forge() for _ in range(3)]
    for each in tokens:
        verifier.verify(each, TokenKind.ACCESS)
    rig.swap_key_material()
    with pytest.raises(InvalidTokenError):
        verifier.verify(tokens[0], TokenKind.ACCESS)  # evicted, so checked again, against the impostor
    assert verifier.verify(tokens[2], TokenKind.ACCESS).sub == "user-1"


def test_cached_token_is_refused_once_its_key_leaves_the_ring(rig: Rig, token: str) -> None:
    rig.verify(token)
    rig.ring.replace([])
    with pytest.raises(InvalidTokenError):
        rig.verify(token)


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_cached_token_is_refused_once_its_key_is_revoked_from_the_directory(rig: Rig, token: str) -> None:
    # `handshake keys revoke KID`: the file goes, the ring reloads, every token of that key is refused.
    assert rig.directory is not None
    rig.verify(token)
    rig.directory.add(rig.alg)  # rotate first, as an operator would: the ring keeps a key to sign with
    assert rig.directory.remove(rig.key.kid)
    rig.ring.replace(rig.directory.load())
    with pytest.raises(InvalidTokenError):
        rig.verify(token)


def test_cached_token_is_accepted_within_leeway_and_refused_after(rig: Rig, token: str) -> None:
    exp = rig.verify(token).exp
    rig.clock.now = exp + 29
    assert rig.verify(token).exp == exp
    rig.clock.now = exp + 31
    with pytest.raises(InvalidTokenError):
        rig.verify(token)


def test_cached_token_is_refused_as_another_kind(rig: Rig, token: str) -> None:
    rig.verify(token)
    with pytest.raises(InvalidTokenError):
        rig.verify(token, TokenKind.DEVICE)


def test_cached_token_is_refused_for_another_audience(rig: Rig, token: str) -> None:
    rig.verify(token)
    with pytest.raises(InvalidTokenError):
        rig.verify(token, TokenKind.ACCESS, audience=PARTNER)


def test_cached_device_token_is_refused_as_access_token(rig: Rig) -> None:
    token, _ = rig.issuer.device(uid="device-1", ttl=3600)
    rig.verify(token, TokenKind.DEVICE)
    with pytest.raises(InvalidTokenError):
        rig.verify(token, TokenKind.ACCESS)
