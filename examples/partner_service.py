"""A third-party service that accepts Handshake's exchanged tokens (SPEC §3, §4 `POST /v1/auth/exchange`).
It has its own app and no database: it verifies tokens from the platform's JWKS URL alone.

    HANDSHAKE_URL=http://127.0.0.1:8000 uvicorn --factory examples.partner_service:create_app --port 9000
    HANDSHAKE_URL=http://127.0.0.1:8000 python examples/partner_service.py
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.auth import Authenticator
from shared.deps import Principal, partner_token
from shared.errors import HandshakeError


@dataclass(frozen=True)
class PartnerConfig:
    handshake_url: str
    audience: str
    issuer: str

    @classmethod
    def from_env(cls) -> PartnerConfig:
        url = os.environ.get("HANDSHAKE_URL", "http://127.0.0.1:8000").rstrip("/")
        return cls(
            handshake_url=url,
            audience=os.environ.get("PARTNER_AUDIENCE", "partner.example"),
            # The `iss` Handshake puts in its tokens (its HANDSHAKE_ISSUER); usually its own URL.
            issuer=os.environ.get("HANDSHAKE_ISSUER", url),
        )


def create_app(config: PartnerConfig | None = None) -> FastAPI:
    config = config or PartnerConfig.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The key set is fetched on the first request, not here: a fetch that fails at start-up would
        # hold off the next attempt for the re-fetch interval, so start order would matter.
        authenticator = Authenticator.from_jwks_url(
            f"{config.handshake_url}/.well-known/jwks.json", issuer=config.issuer, audience=config.audience
        )
        # shared.deps finds the Authenticator in the request state under `auth`.
        yield {"auth": authenticator}

    app = FastAPI(title="Partner service (Handshake example)", lifespan=lifespan)

    @app.exception_handler(HandshakeError)
    async def handshake_error(request: Request, exc: HandshakeError) -> JSONResponse:
        # {"error", "detail"} with the error's own status and headers (WWW-Authenticate on a 401).
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    # A default, not an Annotated alias: with postponed annotations FastAPI could not see a local alias.
    partner = partner_token(config.audience)

    @app.get("/partner/hello")
    async def hello(caller: Principal = partner) -> dict[str, Any]:
        # Only an exchanged token minted for our audience gets here; a plain access token does not.
        return {"message": f"hello, {caller.id}", "sub": caller.id, "nonce": caller.claims.nonce}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        create_app(),
        host=os.environ.get("PARTNER_HOST", "127.0.0.1"),
        port=int(os.environ.get("PARTNER_PORT", "9000")),
    )
