"""Device credentials: UIDs, secrets, claim codes, pairing tokens. Each is shown once and stored hashed.

A UID is printed on a label and is public; only the secret (and the tokens it buys) proves a device
(Kalay's CVE-2021-28372 let whoever knew a UID pose as the device)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

from shared.clock import sha256_hex

UID_LENGTH = 20
UID_PATTERN = re.compile(r"[A-Z0-9]{20}")
_UID_ALPHABET = string.ascii_uppercase + string.digits
# Claim codes are read off a label and typed by a person: no 0/O, 1/I/L, 5/S, 8/B, 2/Z look-alikes.
CLAIM_ALPHABET = "34679ACDEFGHJKMNPQRTUVWXY"
CLAIM_LENGTH = 8
SECRET_PREFIX = "hsd_"
PAIRING_PREFIX = "hsp_"
_SCRYPT = {"n": 2**12, "r": 8, "p": 1, "dklen": 32}


def new_uid() -> str:
    return "".join(secrets.choice(_UID_ALPHABET) for _ in range(UID_LENGTH))


def normalize_uid(uid: str) -> str | None:
    """Upper-cased; None when it is not 20 characters of [A-Z0-9]."""
    candidate = uid.strip().upper()
    return candidate if UID_PATTERN.fullmatch(candidate) else None


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)  # 192 bits


def hash_secret(secret: str) -> str:
    return sha256_hex(secret)


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def new_claim_code() -> str:
    code = "".join(secrets.choice(CLAIM_ALPHABET) for _ in range(CLAIM_LENGTH))
    return f"{code[:4]}-{code[4:]}"


def normalize_claim_code(code: str) -> str:
    """Case and dashes (and spaces) forgiven: '7kq4 m9xd' is '7KQ4-M9XD'."""
    return re.sub(r"[\s-]", "", code).upper()


def hash_claim_code(uid: str, code: str) -> str:
    # scrypt, salted by the UID: a leaked table does not give 40-bit codes away for the price of SHA-256.
    salt = b"handshake-claim:" + uid.encode()
    digest = hashlib.scrypt(normalize_claim_code(code).encode(), salt=salt, **_SCRYPT)
    return digest.hex()


def claim_code_matches(uid: str, code: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_claim_code(uid, code), stored_hash)


def new_pairing_token() -> str:
    return PAIRING_PREFIX + secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    return sha256_hex(token)
