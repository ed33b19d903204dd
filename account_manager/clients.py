"""Registered OAuth clients (SPEC §12): the apps and hubs that may ask for a user's tokens. Registered by
an admin (API or command line), first-party all: no consent screen. A public client (a mobile app, a
hub) keeps no secret and must use PKCE; a confidential one (a server) authenticates with its secret."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from account_manager import oauth_store
from account_manager.redirect_uris import RedirectUriError, check
from shared.clock import sha256_hex, utcnow
from shared.context import Context
from shared.errors import NotFoundError, ValidationFailedError
from shared.models import ActorType, EventType

SECRET_PREFIX = "hcs_"
MAX_REDIRECT_URIS = 20


class GrantType(StrEnum):
    AUTHORIZATION_CODE = "authorization_code"
    DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
    REFRESH_TOKEN = "refresh_token"


class ClientType(StrEnum):
    PUBLIC = "public"
    CONFIDENTIAL = "confidential"


@dataclass(frozen=True)
class NewClient:
    client: oauth_store.ClientRow
    secret: str | None  # shown once, at creation, for a confidential client


def hash_secret(secret: str) -> str:
    return sha256_hex(secret)


def secret_matches(client: oauth_store.ClientRow, secret: str) -> bool:
    if client.secret_hash is None:
        return False
    return hmac.compare_digest(client.secret_hash, hash_secret(secret))


def type_of(client: oauth_store.ClientRow) -> ClientType:
    return ClientType.PUBLIC if client.secret_hash is None else ClientType.CONFIDENTIAL


def _grant_types(asked: list[str]) -> list[str]:
    known = {str(g) for g in GrantType}
    unknown = [g for g in asked if g not in known]
    if unknown:
        raise ValidationFailedError(f"grant_types: {unknown[0]!r} is not one of {', '.join(sorted(known))}.")
    if not set(asked) - {GrantType.REFRESH_TOKEN}:
        raise ValidationFailedError("grant_types: name authorization_code or the device code grant.")
    # Every grant here ends in a session with a refresh token (as a password login does).
    return sorted(set(asked) | {str(GrantType.REFRESH_TOKEN)})


def _redirect_uris(uris: list[str], grant_types: list[str]) -> list[str]:
    if len(uris) > MAX_REDIRECT_URIS:
        raise ValidationFailedError(f"redirect_uris: at most {MAX_REDIRECT_URIS}.")
    try:
        checked = [check(uri) for uri in uris]
    except RedirectUriError as exc:
        raise ValidationFailedError(f"redirect_uris: {exc}.") from None
    if GrantType.AUTHORIZATION_CODE in grant_types and not checked:
        raise ValidationFailedError("redirect_uris: the authorization_code grant needs at least one.")
    return list(dict.fromkeys(checked))


async def create_client(
    ctx: Context,
    *,
    name: str,
    redirect_uris: list[str],
    grant_types: list[str],
    client_type: ClientType,
    actor_id: str | None,
    ip: str | None,
) -> NewClient:
    name = name.strip()
    if not 1 <= len(name) <= 128:
        raise ValidationFailedError("name: 1 to 128 characters.")
    grants = _grant_types(grant_types)
    uris = _redirect_uris(redirect_uris, grants)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32) if client_type is ClientType.CONFIDENTIAL else None
    client = oauth_store.ClientRow(
        id=secrets.token_urlsafe(16),
        name=name,
        secret_hash=hash_secret(secret) if secret else None,
        redirect_uris=uris,
        grant_types=grants,
        created_at=utcnow(),
        created_by=actor_id,
    )
    async with ctx.db.write() as tx:
        await oauth_store.insert_client(tx, client=client)
        await ctx.events.record(
            tx,
            EventType.CLIENT_CREATED,
            actor_type=ActorType.USER if actor_id else ActorType.SYSTEM,
            actor_id=actor_id,
            ip=ip,
            detail={"client_id": client.id, "name": name, "type": str(client_type), "grant_types": grants},
        )
    return NewClient(client, secret)


async def find_client(ctx: Context, client_id: str) -> oauth_store.ClientRow | None:
    if not client_id or len(client_id) > 64:
        return None
    async with ctx.db.query() as tx:
        return await oauth_store.client_by_id(tx, client_id=client_id)


async def get_client(ctx: Context, client_id: str) -> oauth_store.ClientRow:
    client = await find_client(ctx, client_id)
    if client is None:
        raise NotFoundError("No such client.")
    return client


async def list_clients(ctx: Context, *, limit: int, offset: int) -> tuple[list[oauth_store.ClientRow], int]:
    async with ctx.db.read() as tx:
        return await oauth_store.list_clients(tx, limit=limit, offset=offset)


async def delete_client(ctx: Context, *, client_id: str, actor_id: str | None, ip: str | None) -> None:
    """The client goes, with its pending codes; every session issued to it ends at once (an app that
    is no longer registered keeps no user logged in)."""
    async with ctx.db.write() as tx:
        sids = await oauth_store.client_session_ids(tx, client_id=client_id, now=utcnow())
        if not await oauth_store.delete_client(tx, client_id=client_id):
            raise NotFoundError("No such client.")
        ended = await ctx.revocations.revoke_sessions(tx, sids, reason="client_deleted")
        await ctx.events.record(
            tx,
            EventType.CLIENT_DELETED,
            actor_type=ActorType.USER if actor_id else ActorType.SYSTEM,
            actor_id=actor_id,
            ip=ip,
            detail={"client_id": client_id, "sessions_ended": len(ended)},
        )
