"""TOTP (RFC 6238) with pyotp: 6 digits, 30 s steps, SHA-1, what every authenticator app reads; the
secret sealed at rest with AES-GCM under a key file of the key directory, the user id as associated
data (a sealed secret copied to another user's row does not open)."""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.context import Context
from shared.registry import Key

STEP = 30
DIGITS = 6
ISSUER_NAME = "Handshake"
KEY_FILE = "mfa-secrets.aes"  # beside the signing keys (*.key.json), which the key ring alone reads
_VERSION = b"\x01"


def new_secret() -> str:
    return pyotp.random_base32()  # 32 base32 characters: 160 bits, RFC 4226's recommended length


def otpauth_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(name=username, issuer_name=ISSUER_NAME)


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP)


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step `code` belongs to: the current one or the one before it (a code typed at the end
    of its 30 s still works), never older and never a future one. Compared in constant time."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    step = current_step(now)
    found = None
    for candidate in (step, step - 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code) and found is None:
            found = candidate
    return found


def code_at(secret: str, when: float) -> str:
    """The code of the step `when` falls in (the command line and the tests compute codes with it)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).at(when)


class SecretBox:
    """Seals and opens TOTP secrets. The key is 256 random bits in a 0600 file of the key directory,
    made on first use; several processes starting at once agree on one (the first link wins)."""

    def __init__(self, key: bytes) -> None:
        self.aead = AESGCM(key)

    @classmethod
    def from_directory(cls, directory: Path) -> SecretBox:
        return cls(_load_or_create_key(directory / KEY_FILE))

    def seal(self, secret: str, *, user_id: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return _VERSION + nonce + self.aead.encrypt(nonce, secret.encode(), user_id.encode())

    def open(self, box: bytes, *, user_id: str) -> str | None:
        if len(box) < 1 + 12 + 16 or box[:1] != _VERSION:
            return None
        try:
            return self.aead.decrypt(box[1:13], box[13:], user_id.encode()).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None


def _load_or_create_key(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # fails if another process made it first: then theirs is the key
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = path.read_bytes()
    if len(key) != 32:
        raise RuntimeError(f"{path} is not a 256-bit key")
    return key


SECRET_BOX = Key[SecretBox]("mfa_secret_box")


def secret_box(ctx: Context) -> SecretBox:
    return ctx.services.get(SECRET_BOX, lambda: SecretBox.from_directory(ctx.settings.keys_dir))
