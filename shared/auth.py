"""Authentication of a presented token: the verifier (signature, claims) and then revocation. The same
token gets the same answer at every door: HTTP dependencies, introspection, the broker, the hooks."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from shared.errors import InvalidTokenError, MfaEnrolmentRequiredError
from shared.keys import Key, KeyRing, public_key_from_jwk
from shared.metrics import Metrics
from shared.revocation import Revocations
from shared.tokens import Claims, TokenKind, UnknownKeyError, Verifier

log = logging.getLogger("handshake.auth")


class RemoteKeys:
    """A key ring filled from a JWKS URL, for verifiers outside the platform. It keeps its last good
    key set when a fetch fails, and re-fetches on an unknown kid at most once per `min_interval`,
    so random kids cannot turn into a fetch storm (SPEC §3)."""

    def __init__(self, url: str, *, min_interval: float = 30.0, max_age: float = 300.0, timeout: float = 3.0) -> None:
        self.url = url
        self.ring = KeyRing()
        self.min_interval = min_interval
        self.max_age = max_age
        self.timeout = timeout
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def due(self) -> bool:
        return time.monotonic() - self._fetched_at >= self.max_age

    async def refresh(self, *, unknown_kid: bool = False) -> bool:
        """Fetch the key set if allowed now; True when the ring changed."""
        async with self._lock:
            now = time.monotonic()
            if now - self._attempted_at < self.min_interval:
                return False
            if not unknown_kid and now - self._fetched_at < self.max_age:
                return False
            self._attempted_at = now
            try:
                # No redirects: a JWKS that moves is not followed to wherever it points.
                async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
                    response = await client.get(self.url)
                    response.raise_for_status()
                    document: Any = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("JWKS fetch from %s failed (%s); keeping the last good key set", self.url, exc)
                return False
            keys = []
            for jwk in document.get("keys", []) if isinstance(document, dict) else []:
                parsed = public_key_from_jwk(jwk) if isinstance(jwk, dict) else None
                if parsed is not None and isinstance(jwk.get("kid"), str):
                    alg, public = parsed
                    keys.append(Key(kid=jwk["kid"], alg=alg, created_at=0, public=public))
            before = self.ring.version
            self.ring.replace(keys)
            self._fetched_at = now
            return self.ring.version != before


class Authenticator:
    def __init__(
        self,
        verifier: Verifier,
        *,
        revocations: Revocations | None = None,
        remote: RemoteKeys | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.verifier = verifier
        self.revocations = revocations
        self.remote = remote
        self.metrics = metrics

    async def authenticate(
        self, token: str, kind: TokenKind, *, audience: str | None = None, enrolment: bool = False
    ) -> Claims:
        """The verified, unrevoked claims of `token`. A token good only for enrolling a second factor
        (SPEC §12) is refused unless `enrolment` says the caller is one of the enrolment routes."""
        if self.remote is not None and self.remote.due:
            await self.remote.refresh()
        try:
            claims = self._verify(token, kind, audience)
        except UnknownKeyError:
            if self.remote is None or not await self.remote.refresh(unknown_kid=True):
                self._count(kind, "invalid")
                raise
            claims = self._verify(token, kind, audience)
        except InvalidTokenError:
            self._count(kind, "invalid")
            raise
        if self.revocations is not None:
            self.revocations.check(claims)
        self._count(kind, "valid")
        if claims.mfa_enrolment and not enrolment:
            raise MfaEnrolmentRequiredError()
        return claims

    def _verify(self, token: str, kind: TokenKind, audience: str | None) -> Claims:
        return self.verifier.verify(token, kind, audience=audience)

    def _count(self, kind: TokenKind, result: str) -> None:
        if self.metrics is None:
            return
        self.metrics.child(self.metrics.token_verifications, kind.value, result).inc()

    @classmethod
    def from_jwks_url(cls, url: str, *, issuer: str, audience: str) -> Authenticator:
        """For a third-party service: verify our tokens from the JWKS URL alone."""
        remote = RemoteKeys(url)
        return cls(Verifier(remote.ring, issuer=issuer, audience=audience), remote=remote)
