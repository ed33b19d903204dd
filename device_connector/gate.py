"""Who may connect (SPEC §6), for every broker: the token is verified once, at CONNECT, by the same
authenticator as every HTTP door, and the connection's grants are loaded then and kept in memory.

- A device connects with client_id = username = UID and password = a device token.
- A user connects with username = user id, password = an access token, and a client id that is the
  user id or the user id, '-', and 1 to 40 more characters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from device_connector import store
from device_connector.acl import Grants, may_publish, renews
from device_connector.port import ConnackCode, RefusedError
from shared.context import Context
from shared.db import BACKEND_ERRORS
from shared.errors import InvalidTokenError, ServiceUnavailableError
from shared.models import Role
from shared.tokens import Claims, TokenKind

DEVICE_ID = re.compile(r"[A-Z0-9]{20}")
USER_ID = re.compile(r"[a-z0-9]{20}")
MAX_SUFFIX = 40
# A revocation state or database that cannot be reached: the CONNECT is refused as unavailable.
_UNAVAILABLE: tuple[type[BaseException], ...] = (ServiceUnavailableError, *BACKEND_ERRORS)


@dataclass(frozen=True)
class Admission:
    claims: Claims
    grants: Grants


def client_id_allowed(client_id: str, subject: str, *, device: bool) -> bool:
    if device:
        return client_id == subject
    if client_id == subject:
        return True
    prefix = subject + "-"
    return client_id.startswith(prefix) and 1 <= len(client_id) - len(prefix) <= MAX_SUFFIX


def is_device_name(username: str) -> bool:
    return bool(DEVICE_ID.fullmatch(username))


class Gate:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def admit(
        self, *, client_id: str, username: str | None, password: str | None, will_topic: str | None = None
    ) -> Admission:
        if not username or not password:
            raise RefusedError(ConnackCode.NOT_AUTHORIZED, "no credentials")
        device = is_device_name(username)
        if not device and not USER_ID.fullmatch(username):
            raise RefusedError(ConnackCode.NOT_AUTHORIZED, "username is neither a device UID nor a user id")
        try:
            claims = await self.ctx.auth.authenticate(password, TokenKind.DEVICE if device else TokenKind.ACCESS)
        except ServiceUnavailableError:
            raise RefusedError(ConnackCode.SERVER_UNAVAILABLE, "revocation state unconfirmed") from None
        except InvalidTokenError:
            raise RefusedError(ConnackCode.NOT_AUTHORIZED, "bad token") from None
        if claims.sub != username or not client_id_allowed(client_id, claims.sub, device=device):
            raise RefusedError(ConnackCode.NOT_AUTHORIZED, "client id or username does not match the token")
        grants = await self.grants(claims.sub, device=device, admin=claims.role == Role.ADMIN)
        if will_topic is not None and (not may_publish(grants, will_topic) or renews(grants, will_topic)):
            raise RefusedError(ConnackCode.NOT_AUTHORIZED, "will topic not allowed")
        return Admission(claims, grants)

    async def grants(self, subject: str, *, device: bool, admin: bool = False) -> Grants:
        """What a device or a user may touch now, read from the database for a user."""
        if device:
            return Grants.for_device(subject)
        try:
            async with self.ctx.db.read() as tx:
                roles = await store.roles_of_user(tx, user_id=subject)
        except _UNAVAILABLE:
            raise RefusedError(ConnackCode.SERVER_UNAVAILABLE, "database unreachable") from None
        return Grants.for_user(subject, roles, admin=admin)

    async def grants_of(self, client_id: str, username: str) -> Grants | None:
        """Grants of a connection admitted elsewhere (another replica, or long ago), rebuilt from the
        database; None where the names cannot belong to one admitted connection."""
        device = is_device_name(username)
        if device and (client_id != username or username in self.ctx.revocations.devices):
            return None
        if not device and not (USER_ID.fullmatch(username) and client_id_allowed(client_id, username, device=False)):
            return None
        admin = False
        if not device:
            try:
                async with self.ctx.db.read() as tx:
                    role = await store.user_role(tx, user_id=username)
            except _UNAVAILABLE:
                return None
            if role is None:
                return None  # unknown or disabled user
            admin = role == Role.ADMIN
        try:
            return await self.grants(username, device=device, admin=admin)
        except RefusedError:
            return None
