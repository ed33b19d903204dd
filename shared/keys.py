"""The key ring: signing keys in a 0700 directory, one 0600 file per key, loaded once into a
dict[kid, Key]. Rotation adds a key and retires the old one (still verifying until its tokens
expire); revocation deletes a key file, and every process that watches the directory drops it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from shared.errors import ConfigurationError
from shared.settings import Settings

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

KEY_SUFFIX = ".key.json"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Key:
    kid: str
    alg: str
    created_at: int
    retired_at: int | None = None
    private: PrivateKey | None = field(default=None, repr=False)
    public: PublicKey | None = field(default=None, repr=False)
    secret: bytes | None = field(default=None, repr=False)  # HS256 only

    @property
    def signing_material(self) -> Any:
        return self.secret if self.alg == "HS256" else self.private

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (RFC 7517); `d` and HMAC secrets never leave the server."""
        assert self.public is not None
        if self.alg == "ES256":
            assert isinstance(self.public, ec.EllipticCurvePublicKey)
            jwk = ECAlgorithm.to_jwk(self.public, as_dict=True)
        elif self.alg == "EdDSA":
            assert isinstance(self.public, ed25519.Ed25519PublicKey)
            jwk = OKPAlgorithm.to_jwk(self.public, as_dict=True)
        else:
            assert isinstance(self.public, rsa.RSAPublicKey)
            jwk = RSAAlgorithm.to_jwk(self.public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def generate_private_key(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ConfigurationError(f"cannot generate a key pair for {alg}")


def thumbprint_kid(public: PublicKey) -> str:
    """22 base64url characters of the key's SHA-256, never beginning with `-`: a kid is typed on the
    command line (`handshake keys revoke KID`), where a leading dash reads as an option. One kid in 64
    would; those take `k` in front instead (still unique: the rest is the same thumbprint)."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = b64url(hashlib.sha256(der).digest())[:22]
    return "k" + kid[1:] if kid.startswith("-") else kid


def hmac_kid(secret: bytes) -> str:
    return "hs-" + b64url(hashlib.sha256(b"handshake-kid:" + secret).digest())[:16]


def _secure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, document: dict[str, Any]) -> None:
    # Written to a temporary name then renamed, so a watcher never reads half a key.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)
    os.replace(tmp, path)


def _load_file(path: Path) -> Key:
    document = json.loads(path.read_text())
    private = serialization.load_pem_private_key(document["pem"].encode(), password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ConfigurationError(f"{path} holds an unsupported key type")
    return Key(
        kid=document["kid"],
        alg=document["alg"],
        created_at=int(document["created_at"]),
        retired_at=document.get("retired_at"),
        private=private,
        public=private.public_key(),
    )


class KeyDirectory:
    """The files behind the ring. Used by the command line (rotate, list, revoke) and by the ring."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """A cheap summary of the directory, to notice another process's rotate or revoke."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return ()
        return tuple(
            sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries if e.name.endswith(KEY_SUFFIX))
        )

    def load(self) -> list[Key]:
        if not self.path.is_dir():
            return []
        keys = []
        for path in sorted(self.path.glob(f"*{KEY_SUFFIX}")):
            try:
                keys.append(_load_file(path))
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigurationError(f"cannot read key file {path}: {exc}") from exc
        return keys

    def add(self, alg: str, *, now: int | None = None) -> Key:
        """Generate a key, retire the current signing key, and write both."""
        _secure_dir(self.path)
        now = int(time.time()) if now is None else now
        for old in self.load():
            if old.retired_at is None:
                self._write(Key(old.kid, old.alg, old.created_at, now, old.private, old.public))
        private = generate_private_key(alg)
        key = Key(thumbprint_kid(private.public_key()), alg, now, None, private, private.public_key())
        self._write(key)
        return key

    def remove(self, kid: str) -> bool:
        for key in self.load():
            if key.kid == kid:
                (self.path / f"{kid}{KEY_SUFFIX}").unlink()
                return True
        return False

    def prune(self, *, max_token_ttl: int, leeway: int, now: int | None = None) -> list[str]:
        """Delete retired keys whose every token has expired."""
        now = int(time.time()) if now is None else now
        gone = []
        for key in self.load():
            if key.retired_at is not None and key.retired_at + max_token_ttl + leeway < now:
                (self.path / f"{key.kid}{KEY_SUFFIX}").unlink(missing_ok=True)
                gone.append(key.kid)
        return gone

    def ensure(self, alg: str) -> None:
        """First run: create the directory and a signing key of the configured algorithm."""
        _secure_dir(self.path)
        if not any(k.alg == alg and k.retired_at is None for k in self.load()):
            self.add(alg)

    def _write(self, key: Key) -> None:
        assert key.private is not None
        pem = key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        document = {"kid": key.kid, "alg": key.alg, "created_at": key.created_at, "pem": pem.decode()}
        if key.retired_at is not None:
            document["retired_at"] = key.retired_at
        _write_private(self.path / f"{key.kid}{KEY_SUFFIX}", document)


class KeyRing:
    """The keys this process signs and verifies with: a dict lookup by kid on the hot path."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.by_kid: dict[str, Key] = {}
        self.signing: Key | None = None
        self.replace(keys)

    def replace(self, keys: Iterable[Key]) -> None:
        by_kid = {key.kid: key for key in keys}
        active = [k for k in by_kid.values() if k.retired_at is None and k.signing_material is not None]
        self.signing = max(active, key=lambda k: (k.created_at, k.kid)) if active else None
        self.by_kid = by_kid
        self.version = hashlib.sha256(",".join(sorted(by_kid)).encode()).hexdigest()[:12]

    def get(self, kid: str) -> Key | None:
        return self.by_kid.get(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.by_kid.values() if k.public is not None]}


def hmac_key(secret: str) -> Key:
    raw = secret.encode()
    return Key(kid=hmac_kid(raw), alg="HS256", created_at=0, secret=raw)


def ring_from_settings(settings: Settings, *, create: bool) -> tuple[KeyRing, KeyDirectory]:
    directory = KeyDirectory(settings.keys_dir)
    if settings.jwt_alg == "HS256":
        assert settings.secret is not None
        return KeyRing([hmac_key(settings.secret)]), directory
    if create:
        try:
            directory.ensure(settings.jwt_alg)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use the key directory {settings.keys_dir} ({exc.strerror}): fix HANDSHAKE_KEYS_DIR"
            ) from exc
    keys = directory.load()
    if not keys:
        raise ConfigurationError(
            f"no signing keys in {settings.keys_dir}: run `handshake serve` once or `handshake keys rotate`"
        )
    return KeyRing(keys), directory


def public_key_from_jwk(jwk: dict[str, Any]) -> tuple[str, PublicKey] | None:
    """A verifier's view of one JWKS entry: (alg, public key), or None for what we do not accept."""
    alg = jwk.get("alg")
    try:
        if alg == "ES256" and jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            public: Any = ECAlgorithm.from_jwk(jwk)
        elif alg == "EdDSA" and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            public = OKPAlgorithm.from_jwk(jwk)
        elif alg == "RS256" and jwk.get("kty") == "RSA":
            public = RSAAlgorithm.from_jwk(jwk)
        else:
            return None
    except Exception:
        return None
    if isinstance(public, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        public = public.public_key()  # a JWKS must not carry private parts; use only the public half
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        return None
    return alg, public
