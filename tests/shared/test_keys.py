"""The key directory and ring (SPEC §3): private files, one signing key, rotation that keeps old keys
verifying, revocation and pruning, and a JWKS that holds only public keys an outside library can use."""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt as jose_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet, KeySetSerialization
from joserfc.jwt import JWTClaimsRegistry
from jwt.algorithms import RSAAlgorithm

from shared.errors import InvalidTokenError
from shared.keys import KEY_SUFFIX, Key, KeyDirectory, KeyRing, hmac_key, public_key_from_jwk
from shared.tokens import Issuer, TokenKind, Verifier

ASYMMETRIC = ("ES256", "EdDSA", "RS256")
ISSUER = "https://handshake.test"
AUDIENCE = "handshake.test"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}  # RFC 7518 §6.2.2, §6.3.2, §6.4.1
TOKEN_TTL = 900
LEEWAY = 30


@pytest.fixture(params=ASYMMETRIC)
def alg(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def directory(tmp_path: Path) -> KeyDirectory:
    return KeyDirectory(tmp_path / "keys")


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: the modes must come from the code, not from a careful umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_files(directory: KeyDirectory) -> list[Path]:
    return sorted(directory.path.glob(f"*{KEY_SUFFIX}"))


def ring_of(directory: KeyDirectory) -> KeyRing:
    return KeyRing(directory.load())


def issue(ring: KeyRing) -> str:
    return Issuer(ring, issuer=ISSUER, audience=AUDIENCE).access(user_id="u1", sid="s1", role="user", ttl=TOKEN_TTL)[0]


def verifier(ring: KeyRing) -> Verifier:
    return Verifier(ring, issuer=ISSUER, audience=AUDIENCE, leeway=LEEWAY)


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


# --- files --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_key_directory_is_created_0700_and_key_files_0600(directory: KeyDirectory, alg: str) -> None:
    directory.ensure(alg)
    assert mode(directory.path) == 0o700
    assert [mode(path) for path in key_files(directory)] == [0o600]


@pytest.mark.usefixtures("open_umask")
def test_existing_open_key_directory_is_tightened_to_0700(directory: KeyDirectory) -> None:
    directory.path.mkdir(mode=0o755)
    directory.ensure("ES256")
    assert mode(directory.path) == 0o700


@pytest.mark.usefixtures("open_umask")
def test_rotation_leaves_every_key_file_0600(directory: KeyDirectory) -> None:
    directory.ensure("ES256")
    directory.add("EdDSA")
    directory.add("ES256")
    assert [mode(path) for path in key_files(directory)] == [0o600] * 3
    assert [path.name for path in directory.path.iterdir() if not path.name.endswith(KEY_SUFFIX)] == []


def test_ensure_creates_one_signing_key_on_first_run(directory: KeyDirectory, alg: str) -> None:
    directory.ensure(alg)
    keys = directory.load()
    assert [(key.alg, key.retired_at) for key in keys] == [(alg, None)]
    signing = ring_of(directory).signing
    assert signing is not None and signing.kid == keys[0].kid


def test_ensure_creates_no_key_on_second_run(directory: KeyDirectory) -> None:
    directory.ensure("ES256")
    before = {path.name: path.read_bytes() for path in key_files(directory)}
    directory.ensure("ES256")
    assert {path.name: path.read_bytes() for path in key_files(directory)} == before


# --- rotation -----------------------------------------------------------------------------------------------


def test_rotation_makes_the_new_key_the_signing_key(directory: KeyDirectory, alg: str) -> None:
    old = directory.add(alg, now=1_000)
    new = directory.add(alg, now=2_000)
    ring = ring_of(directory)
    assert ring.signing is not None and ring.signing.kid == new.kid != old.kid


def test_rotation_retires_the_old_key_but_keeps_it_in_the_ring_and_jwks(directory: KeyDirectory, alg: str) -> None:
    old = directory.add(alg, now=1_000)
    directory.add(alg, now=2_000)
    ring = ring_of(directory)
    retired = ring.get(old.kid)
    assert retired is not None and retired.retired_at == 2_000
    assert old.kid in {jwk["kid"] for jwk in ring.jwks()["keys"]}


def test_tokens_signed_before_rotation_still_verify(directory: KeyDirectory, alg: str) -> None:
    directory.ensure(alg)
    old_token = issue(ring_of(directory))
    directory.add(alg)
    assert verifier(ring_of(directory)).verify(old_token, TokenKind.ACCESS).sub == "u1"


def test_tokens_signed_before_an_algorithm_change_still_verify(directory: KeyDirectory) -> None:
    directory.ensure("RS256")
    old_token = issue(ring_of(directory))
    directory.add("EdDSA")
    assert verifier(ring_of(directory)).verify(old_token, TokenKind.ACCESS).sub == "u1"


def test_tokens_issued_after_rotation_carry_the_new_kid(directory: KeyDirectory, alg: str) -> None:
    old = directory.add(alg, now=1_000)
    ring = ring_of(directory)
    assert kid_of(issue(ring)) == old.kid
    new = directory.add(alg, now=2_000)
    ring.replace(directory.load())  # what a running server does when it sees the directory change
    token = issue(ring)
    assert kid_of(token) == new.kid
    assert verifier(ring).verify(token, TokenKind.ACCESS).kid == new.kid


# --- revocation and pruning ---------------------------------------------------------------------------------


def test_remove_drops_the_key_from_directory_ring_and_jwks(directory: KeyDirectory, alg: str) -> None:
    old = directory.add(alg, now=1_000)
    ring = ring_of(directory)
    token = issue(ring)
    directory.add(alg, now=2_000)

    assert directory.remove(old.kid) is True
    ring.replace(directory.load())

    assert old.kid not in {key.kid for key in directory.load()}
    assert ring.get(old.kid) is None
    assert old.kid not in {jwk["kid"] for jwk in ring.jwks()["keys"]}
    with pytest.raises(InvalidTokenError):
        verifier(ring).verify(token, TokenKind.ACCESS)


def test_remove_of_an_unknown_kid_changes_nothing(directory: KeyDirectory) -> None:
    directory.ensure("ES256")
    before = sorted(path.name for path in key_files(directory))
    assert directory.remove("no-such-kid") is False
    assert sorted(path.name for path in key_files(directory)) == before


def test_prune_deletes_retired_keys_once_their_tokens_have_expired(directory: KeyDirectory) -> None:
    old = directory.add("ES256", now=1_000)
    new = directory.add("ES256", now=2_000)  # retires `old` at 2,000
    last_valid = 2_000 + TOKEN_TTL + LEEWAY

    assert directory.prune(max_token_ttl=TOKEN_TTL, leeway=LEEWAY, now=last_valid) == []
    assert directory.prune(max_token_ttl=TOKEN_TTL, leeway=LEEWAY, now=last_valid + 1) == [old.kid]
    assert [key.kid for key in directory.load()] == [new.kid]


def test_prune_never_deletes_the_signing_key(directory: KeyDirectory) -> None:
    key = directory.add("ES256", now=1_000)
    assert directory.prune(max_token_ttl=TOKEN_TTL, leeway=LEEWAY, now=10**10) == []
    assert [k.kid for k in directory.load()] == [key.kid]


# --- JWKS ---------------------------------------------------------------------------------------------------


def test_jwks_never_contains_private_parts(directory: KeyDirectory, alg: str) -> None:
    directory.add(alg, now=1_000)
    directory.add(alg, now=2_000)
    jwks = ring_of(directory).jwks()
    assert len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert PRIVATE_MEMBERS.isdisjoint(jwk), jwk
        assert (jwk["alg"], jwk["use"]) == (alg, "sig") and jwk["kty"] != "oct"


def test_jwks_never_contains_hmac_keys(directory: KeyDirectory) -> None:
    secret = hmac_key("an-hmac-secret-of-at-least-32-bytes!!")
    assert KeyRing([secret]).jwks() == {"keys": []}
    directory.ensure("ES256")
    jwks = KeyRing([*directory.load(), secret]).jwks()
    assert [jwk["alg"] for jwk in jwks["keys"]] == ["ES256"]
    assert secret.kid not in {jwk["kid"] for jwk in jwks["keys"]}


def _joserfc_decode(token: str, jwks: dict[str, Any], alg: str) -> dict[str, Any]:
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864 (in favour of "Ed25519"); SPEC §3 signs with "EdDSA".
        warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)
        decoded = jose_jwt.decode(token, KeySet.import_key_set(cast(KeySetSerialization, jwks)), algorithms=[alg])
    registry = JWTClaimsRegistry(
        leeway=LEEWAY,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        sub={"essential": True},
    )
    registry.validate(decoded.claims)
    assert decoded.header["kid"] == kid_of(token)
    claims: dict[str, Any] = decoded.claims
    return claims


def test_tokens_verify_with_joserfc_from_the_jwks_alone(directory: KeyDirectory, alg: str) -> None:
    directory.ensure(alg)
    ring = ring_of(directory)
    token = issue(ring)
    assert _joserfc_decode(token, ring.jwks(), alg) == verifier(ring).verify(token, TokenKind.ACCESS).payload


def test_tokens_of_a_retired_key_verify_with_joserfc_from_the_new_jwks(directory: KeyDirectory, alg: str) -> None:
    directory.ensure(alg)
    old_token = issue(ring_of(directory))
    directory.add(alg)
    assert _joserfc_decode(old_token, ring_of(directory).jwks(), alg)["sub"] == "u1"


def test_jwks_entries_give_outside_verifiers_the_same_keys(directory: KeyDirectory, alg: str) -> None:
    # The path a service that only knows our JWKS URL takes (shared.auth): JWK -> public key -> ring.
    directory.ensure(alg)
    ring = ring_of(directory)
    token = issue(ring)
    outside: list[Key] = []
    for jwk in ring.jwks()["keys"]:
        parsed = public_key_from_jwk(jwk)
        assert parsed is not None
        outside.append(Key(kid=jwk["kid"], alg=parsed[0], created_at=0, public=parsed[1]))
    assert verifier(KeyRing(outside)).verify(token, TokenKind.ACCESS).sub == "u1"


def test_public_key_from_jwk_refuses_what_we_do_not_sign_with(directory: KeyDirectory) -> None:
    directory.ensure("ES256")
    es256 = ring_of(directory).jwks()["keys"][0]
    weak_rsa = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key(), as_dict=True)
    refused: list[dict[str, Any]] = [
        {**es256, "alg": "RS256"},
        {**es256, "alg": "HS256"},
        {**es256, "alg": None},
        {**es256, "crv": "P-384"},
        {**es256, "x": "not-base64!"},
        {**weak_rsa, "alg": "RS256"},
        {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"},
    ]
    assert [public_key_from_jwk(jwk) for jwk in refused] == [None] * len(refused)
