"""Admissions shared between connector replicas through Redis (two `Admissions` on one prefix stand
for two replicas): a replica reads the client id's latest admission, not its own older copy, and an
admission it cannot read counts as none."""

from __future__ import annotations

import pytest

from device_connector.acl import Grants
from device_connector.clustered import Admissions
from device_connector.gate import Admission
from shared.context import Context
from shared.models import DeviceRole
from shared.tokens import TokenKind
from tests.conftest import Users


async def test_a_replica_reads_the_latest_admission_not_its_own_older_copy(ctx: Context, users: Users) -> None:
    if ctx.redis is None:
        pytest.skip("admissions are shared between replicas through Redis (the postgres backend has it)")
    user, tokens = await users.new()
    claims = await ctx.auth.authenticate(tokens["access_token"], TokenKind.ACCESS)
    first, second = Admissions(ctx), Admissions(ctx)
    client_id = user["id"]
    before = Grants.for_user(user["id"], {"DEVICE00000000000001": DeviceRole.VIEWER})
    await first.put(client_id, user["id"], Admission(claims, before))
    # Unshared, kicked, and admitted again by the other replica with what the user has now.
    await second.put(client_id, user["id"], Admission(claims, Grants.for_user(user["id"], {})))
    found = await first.get(client_id, user["id"])
    assert found is not None and found.roles == {}
    assert not found.lost_since(Grants.for_user(user["id"], {}))
    assert await first.get(client_id, "someone-else") is None

    # Written by a version that kept no roles: nothing to compare, as before.
    old = found.to_json().replace(b',"roles":{}', b"")
    assert b"roles" not in old
    await ctx.redis.set(first.prefix + client_id, old)
    legacy = await first.get(client_id, user["id"])
    assert legacy is not None and legacy.roles is None
    # Unreadable (a role this version does not know): as if there were none, so the connection goes.
    await ctx.redis.set(first.prefix + client_id, old.replace(b'"client_id"', b'"roles":{"X":"emperor"},"client_id"'))
    assert await first.get(client_id, user["id"]) is None
