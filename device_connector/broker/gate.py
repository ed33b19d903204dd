"""Who may connect (SPEC §6): the token is verified once, at CONNECT, by the same authenticator as
every HTTP door; the connection's grants are loaded then and kept in memory.

- A device connects with client_id = username = UID and password = a device token.
- A user connects with username = user id, password = an access token, and a client id that is the
  user id or the user id, '-', and 1 to 40 more characters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from amqtt.mqtt.connack import NOT_AUTHORIZED, SERVER_UNAVAILABLE
from amqtt.session import Session

from device_connector import store
from device_connector.acl import Grants, may_publish
from device_connector.broker.server import Refused
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


@dataclass
class Admission:
    grants: Grants
    claims: Claims


def client_id_allowed(client_id: str, subject: str, *, device: bool) -> bool:
    if device:
        return client_id == subject
    if client_id == subject:
        return True
    prefix = subject + "-"
    return client_id.startswith(prefix) and 1 <= len(client_id) - len(prefix) <= MAX_SUFFIX


class Gate:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def __call__(self, session: Session) -> Grants:
        admission = await self.admit(
            client_id=session.client_id or "",
            username=session.username,
            password=session.password,
            will_topic=session.will_topic if session.will_flag else None,
        )
        session.claims = admission.claims
        return admission.grants

    async def admit(
        self, *, client_id: str, username: str | None, password: str | None, will_topic: str | None = None
    ) -> Admission:
        if not username or not password:
            raise Refused(NOT_AUTHORIZED, "no credentials")
        device = bool(DEVICE_ID.fullmatch(username))
        if not device and not USER_ID.fullmatch(username):
            raise Refused(NOT_AUTHORIZED, "username is neither a device UID nor a user id")
        try:
            claims = await self.ctx.auth.authenticate(password, TokenKind.DEVICE if device else TokenKind.ACCESS)
        except ServiceUnavailableError:
            raise Refused(SERVER_UNAVAILABLE, "revocation state unconfirmed") from None
        except InvalidTokenError:
            raise Refused(NOT_AUTHORIZED, "bad token") from None
        if claims.sub != username or not client_id_allowed(client_id, claims.sub, device=device):
            raise Refused(NOT_AUTHORIZED, "client id or username does not match the token")
        grants = await self.grants(claims)
        if will_topic is not None and not may_publish(grants, will_topic):
            raise Refused(NOT_AUTHORIZED, "will topic not allowed")
        return Admission(grants, claims)

    async def grants(self, claims: Claims) -> Grants:
        if claims.kind is TokenKind.DEVICE:
            return Grants.for_device(claims.sub)
        try:
            async with self.ctx.db.read() as tx:
                roles = await store.roles_of_user(tx, user_id=claims.sub)
        except _UNAVAILABLE:
            raise Refused(SERVER_UNAVAILABLE, "database unreachable") from None
        return Grants.for_user(claims.sub, roles, admin=claims.role == Role.ADMIN)
