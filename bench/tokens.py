"""Token throughput (PERF §1), one core: for ES256, EdDSA, RS256 and HS256, signing through our Issuer;
verification through our Verifier on distinct tokens with the cache off, against the raw primitive on the
same inputs and PyJWT's decode on the same tokens; and a repeated token through the cache. Baselines and
ours alternate over several rounds and the medians are printed, with the ratios taken round by round
(PERF §6: the machine is shared and noisy, so only ratios measured in the same run mean anything).

Run from the repository root:  .venv/bin/python bench/tokens.py [--seconds 0.3] [--rounds 5]
(--seconds is the length of one measurement; the defaults take about 35 s in all)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and bench/http.py would then shadow the
# standard library's `http` (which PyJWT imports through urllib). Keep only the repository's view.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]

import argparse  # noqa: E402
import base64  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import cryptography  # noqa: E402
import jwt  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402

from shared.keys import Key, KeyDirectory, KeyRing, hmac_key  # noqa: E402
from shared.tokens import Issuer, TokenKind, Verifier  # noqa: E402

ALGS = ("ES256", "EdDSA", "RS256", "HS256")
ISSUER = "https://bench.handshake.test"
AUDIENCE = "handshake.bench"
HS256_SECRET = "bench-only-hmac-secret-" + "0123456789abcdef" * 2
POOL = 1_000  # distinct tokens per algorithm; with the cache off, cycling through them costs what new ones would
BATCH = 50  # operations between two looks at the clock
MEASUREMENTS = ("raw", "ours", "pyjwt", "cached", "sign")

Batch = Callable[[int], None]  # runs BATCH operations, given the batch number


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def raw_verifier(key: Key) -> tuple[Callable[[str], bytes], Callable[[bytes, bytes], None]]:
    """(signature as the primitive wants it, given the token's last segment; the primitive itself).
    The conversion runs before timing: the baseline is the primitive alone."""
    public = key.public
    if isinstance(public, ec.EllipticCurvePublicKey):
        ecdsa = ec.ECDSA(hashes.SHA256())

        def to_der(segment: str) -> bytes:
            raw = _unb64(segment)
            return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))

        return to_der, lambda signature, data: public.verify(signature, data, ecdsa)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return _unb64, lambda signature, data: public.verify(signature, data)
    if isinstance(public, rsa.RSAPublicKey):
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
        return _unb64, lambda signature, data: public.verify(signature, data, pkcs1, sha256)
    secret = key.secret
    assert secret is not None

    def hmac_verify(signature: bytes, data: bytes) -> None:
        if not hmac.compare_digest(hmac.new(secret, data, hashlib.sha256).digest(), signature):
            raise ValueError("bad HMAC")

    return _unb64, hmac_verify


@dataclass
class Subject:
    """One algorithm: its ring, a pool of distinct tokens, and one timed batch per measurement."""

    alg: str
    batches: dict[str, Batch]
    results: dict[str, list[float]] = field(default_factory=dict)


def build(alg: str, keys_dir: Path) -> Subject:
    if alg == "HS256":
        ring = KeyRing([hmac_key(HS256_SECRET)])
    else:
        directory = KeyDirectory(keys_dir / alg)
        directory.ensure(alg)
        ring = KeyRing(directory.load())
    key = ring.signing
    assert key is not None
    issuer = Issuer(ring, issuer=ISSUER, audience=AUDIENCE)
    uncached = Verifier(ring, issuer=ISSUER, audience=AUDIENCE, cache_size=0)
    cached = Verifier(ring, issuer=ISSUER, audience=AUDIENCE)
    tokens = [issuer.access(user_id=f"user-{i}", sid=f"session-{i}", role="user", ttl=3600)[0] for i in range(POOL)]
    convert, primitive = raw_verifier(key)
    inputs = [(convert(token.rsplit(".", 1)[1]), token.rsplit(".", 1)[0].encode()) for token in tokens]
    pyjwt_key: Any = key.secret if alg == "HS256" else key.public
    check_agreement(tokens, inputs, uncached, primitive, pyjwt_key, alg)

    chunks = [tokens[i : i + BATCH] for i in range(0, POOL, BATCH)]
    input_chunks = [inputs[i : i + BATCH] for i in range(0, POOL, BATCH)]
    repeated = [tokens[0]] * BATCH
    access = TokenKind.ACCESS

    def sign(_: int) -> None:
        for _ in range(BATCH):
            issuer.access(user_id="user-1", sid="session-1", role="user", ttl=3600)

    def ours(n: int) -> None:
        for token in chunks[n % len(chunks)]:
            uncached.verify(token, access)

    def raw(n: int) -> None:
        for signature, data in input_chunks[n % len(input_chunks)]:
            primitive(signature, data)

    def pyjwt(n: int) -> None:
        for token in chunks[n % len(chunks)]:
            jwt.decode(token, pyjwt_key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)

    def cached_verify(_: int) -> None:
        for token in repeated:
            cached.verify(token, access)

    batches = {"raw": raw, "ours": ours, "pyjwt": pyjwt, "cached": cached_verify, "sign": sign}
    return Subject(alg, batches)


def check_agreement(
    tokens: list[str],
    inputs: list[tuple[bytes, bytes]],
    verifier: Verifier,
    primitive: Callable[[bytes, bytes], None],
    pyjwt_key: Any,
    alg: str,
) -> None:
    """Every contender accepts every token before anything is timed (a fast refusal is no throughput)."""
    for token, (signature, data) in zip(tokens, inputs, strict=True):
        claims = verifier.verify(token, TokenKind.ACCESS)
        primitive(signature, data)
        assert claims.payload == jwt.decode(token, pyjwt_key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)


def ops_per_second(batch: Batch, seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while True:
        batch(done)
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done * BATCH / elapsed


def run(subjects: list[Subject], *, seconds: float, rounds: int) -> None:
    for number in range(rounds):
        # Reverse the order every other round so that a slow drift of the machine favours no one.
        order = MEASUREMENTS if number % 2 == 0 else tuple(reversed(MEASUREMENTS))
        for subject in subjects:
            for name in order:
                subject.results.setdefault(name, []).append(ops_per_second(subject.batches[name], seconds))


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def report(subjects: list[Subject], *, seconds: float, rounds: int) -> str:
    header = ("alg", "sign ours", "verify ours", "raw verify", "PyJWT decode", "cached verify", "ours÷raw", "PyJWT÷raw")
    rows: list[tuple[str, ...]] = [header]
    for subject in subjects:
        r = subject.results
        rows.append(
            (
                subject.alg,
                *(f"{statistics.median(r[name]):,.0f}" for name in ("sign", "ours", "raw", "pyjwt", "cached")),
                f"{median_ratio(r['ours'], r['raw']):.2f}",
                f"{median_ratio(r['pyjwt'], r['raw']):.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"Token throughput, ops/s on one core: medians of {rounds} rounds x {seconds:g} s per measurement;",
        f"verify on {POOL:,} distinct tokens with the cache off; cached = one token repeated, cache on;",
        "ratios are medians of the per-round ratios.",
        "",
    ]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))]
        lines.append(" | ".join(cells))
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths))
    lines += ["", "target (PERF §1): ours÷raw ≥ 0.80 for ES256 and EdDSA; PyJWT is the reference, not the target."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one measurement (default 0.3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of alternated measurements (default 5)")
    parser.add_argument("--algs", default=",".join(ALGS), help=f"comma-separated subset of {','.join(ALGS)}")
    args = parser.parse_args()
    algs = [alg for alg in args.algs.split(",") if alg]
    if unknown := set(algs) - set(ALGS):
        parser.error(f"unknown algorithms: {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Python {platform.python_version()}, PyJWT {jwt.__version__}, cryptography {cryptography.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        subjects = [build(alg, Path(tmp)) for alg in algs]
    run(subjects, seconds=args.seconds, rounds=args.rounds)
    print(report(subjects, seconds=args.seconds, rounds=args.rounds))
    print(f"\n({time.perf_counter() - started:.1f} s in all)")


if __name__ == "__main__":
    main()
