"""Binding (SPEC §5, SECURITY "claiming flows leak and race"): by claim code or pairing token; a wrong
code and an unknown UID answer alike and are rate limited per user and per IP; one winner in a race;
unbinding and a factory reset release the device and its shares for the next owner."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from shared import tables
from shared.context import Context
from tests.conftest import Users
from tests.device_manager import (
    IP,
    Device,
    Person,
    assert_error,
    bind,
    bound_device,
    client_from,
    events,
    get_device,
    person,
    provision,
    share,
    staff,
)

UNKNOWN_UID = "UNKNOWNUNKNOWN000001"


def wrong_code(device: Device) -> str:
    # Same alphabet and shape as a real code, one character changed.
    first = "7" if device.claim_code[0] != "7" else "9"
    return first + device.claim_code[1:]


async def owner_of(ctx: Context, uid: str) -> str | None:
    async with ctx.db.read() as tx:
        owner: str | None = (
            await tx.execute(sa.select(tables.devices.c.owner_id).where(tables.devices.c.uid == uid))
        ).scalar_one()
        return owner


async def new_pairing_token(client: httpx.AsyncClient, user: Person) -> str:
    response = await client.post("/v1/devices/pairing-tokens", headers=user.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["expires_in"] == 600
    token: str = body["pairing_token"]
    return token


async def pair(
    client: httpx.AsyncClient, device: Device, pairing_token: str, secret: str | None = None
) -> httpx.Response:
    body = {"uid": device.uid, "secret": secret or device.secret, "pairing_token": pairing_token}
    return await client.post("/v1/devices/pair", json=body)


def assert_rate_limited(response: httpx.Response) -> None:
    assert_error(response, 429, "too_many_attempts")
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) > 0, response.headers


# --- claim code ---------------------------------------------------------------------------------


async def test_bind_with_claim_code_makes_the_caller_owner(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin)
    response = await bind(client, owner, device.uid, device.claim_code)
    assert response.status_code == 201, response.text
    assert response.json() == {"uid": device.uid, "role": "owner"}
    assert await owner_of(ctx, device.uid) == owner.id
    listed = (await client.get("/v1/devices", headers=owner.headers)).json()
    assert [(row["uid"], row["role"]) for row in listed] == [(device.uid, "owner")]


@pytest.mark.parametrize(
    "spelling",
    [
        lambda code: code.lower(),
        lambda code: code.replace("-", ""),
        lambda code: code.replace("-", "").lower(),
        lambda code: f" {code[:4]} {code[5:]} ".lower(),
    ],
    ids=["lower-case", "without-dash", "lower-case-without-dash", "spaces"],
)
async def test_claim_codes_are_forgiving(
    client: httpx.AsyncClient, users: Users, ctx: Context, spelling: Callable[[str], str]
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin)
    response = await bind(client, owner, device.uid.lower(), spelling(device.claim_code))
    assert response.status_code == 201, response.text
    assert response.json()["uid"] == device.uid


async def test_wrong_code_and_unknown_uid_answer_alike(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, user = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin)
    wrong = await bind(client, user, device.uid, wrong_code(device))
    unknown = await bind(client, user, UNKNOWN_UID, device.claim_code)
    malformed = await bind(client, user, "not-a-uid", device.claim_code)
    assert_error(wrong, 403, "invalid_claim_code")
    assert_error(unknown, 403, "invalid_claim_code")
    assert_error(malformed, 403, "invalid_claim_code")
    assert wrong.json() == unknown.json() == malformed.json()
    assert wrong.headers.get("content-type") == unknown.headers.get("content-type")
    assert await owner_of(ctx, device.uid) is None


async def test_a_claim_code_of_another_device_does_not_bind(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, user = await staff(users, ctx), await person(users)
    first, second = await provision(client, admin, count=2)
    assert_error(await bind(client, user, first.uid, second.claim_code), 403, "invalid_claim_code")
    assert await owner_of(ctx, first.uid) is None


async def test_repeated_failures_are_rate_limited_per_user(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, guesser, neighbour = await staff(users, ctx), await person(users), await person(users)
    target, other = await provision(client, admin, count=2)
    for _ in range(5):
        assert_error(await bind(client, guesser, target.uid, wrong_code(target)), 403, "invalid_claim_code")
    # Blocked now, even with the right code: a refused guess tells nothing.
    assert_rate_limited(await bind(client, guesser, target.uid, target.claim_code))
    assert await owner_of(ctx, target.uid) is None
    # The same address, another user: not blocked by the guesser's failures.
    assert (await bind(client, neighbour, other.uid, other.claim_code)).status_code == 201


async def test_repeated_failures_are_rate_limited_per_ip(
    client: httpx.AsyncClient, app: FastAPI, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    target, other = await provision(client, admin, count=2)
    # 20 failures from one address, spread over users so that no (user, IP) pair reaches its own limit.
    for _ in range(5):
        guesser = await person(users)
        for _ in range(4):
            assert_error(await bind(client, guesser, target.uid, wrong_code(target)), 403, "invalid_claim_code")
    latecomer = await person(users)
    assert_rate_limited(await bind(client, latecomer, target.uid, target.claim_code))
    # The same user from another address is not blocked by this address's failures.
    async with client_from(app, "198.51.100.20") as elsewhere:
        assert (await bind(elsewhere, latecomer, other.uid, other.claim_code)).status_code == 201


async def test_unknown_uids_count_toward_the_rate_limit(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, guesser = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin)
    for n in range(5):
        assert_error(await bind(client, guesser, f"UNKNOWNUNKNOWN00000{n}", "ABCD-EFGH"), 403, "invalid_claim_code")
    assert_rate_limited(await bind(client, guesser, device.uid, device.claim_code))


async def test_a_device_owned_by_another_is_409_already_bound(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, first, second = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, first)
    assert_error(await bind(client, second, device.uid, device.claim_code), 409, "already_bound")
    assert await owner_of(ctx, device.uid) == first.id
    assert_error(await get_device(client, second, device.uid), 404, "not_found")


async def test_simultaneous_binds_have_exactly_one_winner(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    contenders = [await person(users) for _ in range(6)]
    (device,) = await provision(client, admin)
    answers = await asyncio.gather(*(bind(client, user, device.uid, device.claim_code) for user in contenders))
    winners = [user for user, answer in zip(contenders, answers, strict=True) if answer.status_code == 201]
    assert len(winners) == 1, [answer.text for answer in answers]
    for answer in answers:
        if answer.status_code != 201:
            assert_error(answer, 409, "already_bound")
    assert await owner_of(ctx, device.uid) == winners[0].id
    bound = await events(client, admin, device_uid=device.uid, type="device_bound")
    assert [event["actor_id"] for event in bound] == [winners[0].id]
    for loser in contenders:
        if loser is not winners[0]:
            assert_error(await get_device(client, loser, device.uid), 404, "not_found")


async def test_bind_writes_device_bound_with_actor_and_ip(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await bound_device(client, admin, owner)
    (event,) = await events(client, admin, device_uid=device.uid, type="device_bound")
    assert (event["actor_type"], event["actor_id"], event["device_uid"], event["ip"]) == (
        "user",
        owner.id,
        device.uid,
        IP,
    )


# --- unbind -------------------------------------------------------------------------------------


async def test_unbind_removes_every_share_and_frees_the_claim_code(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner, viewer, controller, buyer = (
        await staff(users, ctx),
        await person(users),
        await person(users),
        await person(users),
        await person(users),
    )
    device = await bound_device(client, admin, owner)
    assert (await share(client, owner, device.uid, viewer, "viewer")).status_code == 201
    assert (await share(client, owner, device.uid, controller, "controller")).status_code == 201
    response = await client.delete(f"/v1/devices/{device.uid}/binding", headers=owner.headers)
    assert response.status_code == 204, response.text
    for former in (owner, viewer, controller):
        assert_error(await get_device(client, former, device.uid), 404, "not_found")
        assert (await client.get("/v1/devices", headers=former.headers)).json() == []
    async with ctx.db.read() as tx:
        left = list(await tx.execute(sa.select(tables.device_shares).where(tables.device_shares.c.uid == device.uid)))
    assert left == []
    assert await owner_of(ctx, device.uid) is None
    # The next owner binds with the code on the label.
    assert (await bind(client, buyer, device.uid, device.claim_code)).status_code == 201
    assert (await get_device(client, buyer, device.uid)).json()["role"] == "owner"
    # The old shares did not come back with the new owner.
    assert_error(await get_device(client, viewer, device.uid), 404, "not_found")
    (event,) = await events(client, admin, device_uid=device.uid, type="device_unbound")
    assert (event["actor_type"], event["actor_id"], event["ip"]) == ("user", owner.id, IP)


# --- factory reset ------------------------------------------------------------------------------


async def test_reset_releases_binding_and_shares(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner, viewer, buyer = await staff(users, ctx), await person(users), await person(users), await person(users)
    device = await bound_device(client, admin, owner)
    assert (await share(client, owner, device.uid, viewer, "viewer")).status_code == 201
    response = await client.post("/v1/devices/reset", json={"uid": device.uid, "secret": device.secret})
    assert response.status_code == 204, response.text
    assert_error(await get_device(client, owner, device.uid), 404, "not_found")
    assert_error(await get_device(client, viewer, device.uid), 404, "not_found")
    assert (await bind(client, buyer, device.uid, device.claim_code)).status_code == 201
    unbound = await events(client, admin, device_uid=device.uid, type="device_unbound")
    assert [(e["actor_type"], e["actor_id"], e["ip"]) for e in unbound] == [("device", device.uid, IP)]


async def test_reset_with_a_wrong_secret_is_401_and_releases_nothing(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await bound_device(client, admin, owner)
    response = await client.post("/v1/devices/reset", json={"uid": device.uid, "secret": "hsd_" + "x" * 32})
    assert_error(response, 401, "invalid_credentials")
    assert await owner_of(ctx, device.uid) == owner.id


# --- pairing token ------------------------------------------------------------------------------


async def test_pairing_binds_the_device_to_the_user_who_asked(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin)
    token = await new_pairing_token(client, owner)
    response = await pair(client, device, token)
    assert response.status_code == 201, response.text
    assert await owner_of(ctx, device.uid) == owner.id
    assert (await get_device(client, owner, device.uid)).json()["role"] == "owner"
    (event,) = await events(client, admin, device_uid=device.uid, type="device_bound")
    assert (event["actor_type"], event["actor_id"], event["ip"]) == ("device", device.uid, IP)


async def test_a_pairing_token_works_once(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    first, second = await provision(client, admin, count=2)
    token = await new_pairing_token(client, owner)
    assert (await pair(client, first, token)).status_code == 201
    assert_error(await pair(client, second, token), 403, "invalid_pairing_token")
    assert_error(await pair(client, first, token), 403, "invalid_pairing_token")
    assert await owner_of(ctx, second.uid) is None


async def test_an_expired_pairing_token_is_refused(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin)
    token = await new_pairing_token(client, owner)
    async with ctx.db.write() as tx:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await tx.execute(sa.update(tables.pairing_tokens).values(expires_at=past))
    assert_error(await pair(client, device, token), 403, "invalid_pairing_token")
    assert await owner_of(ctx, device.uid) is None


async def test_an_unknown_pairing_token_is_refused(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    (device,) = await provision(client, admin)
    assert_error(await pair(client, device, "hsp_" + "A" * 32), 403, "invalid_pairing_token")
    assert await owner_of(ctx, device.uid) is None


async def test_pairing_with_a_wrong_secret_is_401_and_leaves_the_token_unused(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin)
    token = await new_pairing_token(client, owner)
    assert_error(await pair(client, device, token, secret="hsd_" + "x" * 32), 401, "invalid_credentials")
    assert await owner_of(ctx, device.uid) is None
    assert (await pair(client, device, token)).status_code == 201


async def test_pairing_a_device_owned_by_another_is_409(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, first, second = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, first)
    token = await new_pairing_token(client, second)
    assert_error(await pair(client, device, token), 409, "already_bound")
    assert await owner_of(ctx, device.uid) == first.id


async def test_pairing_tokens_need_a_user(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/devices/pairing-tokens")
    assert_error(response, 401, "invalid_token")


async def test_wrong_pairing_tokens_are_throttled_per_device(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    """Thirty wrong pairing tokens went unthrottled (issue 17): counted like wrong logins, per device
    and address, and blocked from the fifth on, even with the right one."""
    admin, owner = await staff(users, ctx), await person(users)
    device, other = await provision(client, admin, count=2)
    for _ in range(5):
        assert_error(await pair(client, device, "hsp_" + secrets.token_hex(16)), 403, "invalid_pairing_token")
    token = await new_pairing_token(client, owner)
    assert_rate_limited(await pair(client, device, token))
    assert await owner_of(ctx, device.uid) is None
    # Another device at the same address is not blocked by this one's failures.
    assert (await pair(client, other, token)).status_code == 201
