"""Provisioning (SPEC §5): a batch of up to 1000 devices, each secret and claim code shown once and
stored hashed; bad UIDs refused, a taken UID refuses the whole batch. And what a user sees of devices:
GET /v1/devices and GET /v1/devices/{uid}."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared import tables
from shared.context import Context
from tests.conftest import Users
from tests.device_manager import (
    IP,
    Person,
    assert_error,
    bound_device,
    events,
    get_device,
    person,
    provision,
    share,
    staff,
)

UID = re.compile(r"[A-Z0-9]{20}")
LIST_KEYS = {"uid", "name", "model", "role", "online", "last_seen"}
DETAIL_KEYS = {"uid", "name", "model", "role", "owner_id", "online", "last_seen", "connected_at", "ip", "region"}


async def post_devices(client: httpx.AsyncClient, caller: Person, **body: Any) -> httpx.Response:
    return await client.post("/v1/admin/devices", json={"model": "lamp-1", **body}, headers=caller.headers)


async def stored_uids(ctx: Context) -> set[str]:
    async with ctx.db.read() as tx:
        return set((await tx.execute(sa.select(tables.devices.c.uid))).scalars())


async def every_stored_value(ctx: Context) -> str:
    """Every row of every table, as text: a plaintext credential must appear nowhere, events included."""
    dump = []
    async with ctx.db.read() as tx:
        for table in tables.metadata.sorted_tables:
            for row in await tx.execute(sa.select(table)):
                dump.append(repr(tuple(row)))
    return "\n".join(dump)


# --- the batch ----------------------------------------------------------------------------------


async def test_provisioning_answers_201_with_uid_secret_and_claim_code(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    response = await post_devices(client, admin, count=3)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    made = response.json()["devices"]
    assert len(made) == 3
    for device in made:
        assert set(device) == {"uid", "secret", "claim_code"}
        assert UID.fullmatch(device["uid"]), device
        assert len(device["secret"]) >= 22  # ≥ 128 bits of base64url
        assert device["claim_code"]
    assert (
        len({d["uid"] for d in made}) == len({d["secret"] for d in made}) == len({d["claim_code"] for d in made}) == 3
    )


async def test_provisioning_defaults_to_one_device(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    response = await client.post("/v1/admin/devices", json={"model": "lamp-1"}, headers=admin.headers)
    assert response.status_code == 201, response.text
    assert len(response.json()["devices"]) == 1


async def test_provisioning_makes_up_to_1000_devices_a_call(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    made = await provision(client, admin, count=1000)
    assert len({device.uid for device in made}) == 1000
    assert await stored_uids(ctx) == {device.uid for device in made}


@pytest.mark.parametrize("count", [0, 1001, -1])
async def test_provisioning_count_outside_1_to_1000_is_422(
    client: httpx.AsyncClient, users: Users, ctx: Context, count: int
) -> None:
    admin = await staff(users, ctx)
    response = await post_devices(client, admin, count=count)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "detail"}
    assert await stored_uids(ctx) == set()


async def test_given_uids_are_upper_cased(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    wanted = ["abcdefghij0123456789", "ZYXWVUTSRQ9876543210"]
    made = await provision(client, admin, uids=wanted)
    assert [device.uid for device in made] == ["ABCDEFGHIJ0123456789", "ZYXWVUTSRQ9876543210"]
    assert await stored_uids(ctx) == {"ABCDEFGHIJ0123456789", "ZYXWVUTSRQ9876543210"}


@pytest.mark.parametrize(
    "bad",
    ["SHORT", "ABCDEFGHIJ01234567890", "ABCDEFGHIJ-123456789", "ABCDEFGHIJ 123456789", "ÄBCDEFGHIJ0123456789", ""],
)
async def test_a_bad_uid_is_422_and_nothing_is_written(
    client: httpx.AsyncClient, users: Users, ctx: Context, bad: str
) -> None:
    admin = await staff(users, ctx)
    response = await post_devices(client, admin, uids=["GOODGOODGOODGOOD0001", bad])
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "detail"}
    assert await stored_uids(ctx) == set()


async def test_a_taken_uid_is_409_and_nothing_of_the_batch_is_written(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    (existing,) = await provision(client, admin, uids=["TAKENTAKENTAKEN00001"])
    batch = ["FRESHFRESHFRESH00001", "takentakentaken00001", "FRESHFRESHFRESH00002"]
    response = await post_devices(client, admin, uids=batch)
    assert response.status_code == 409, response.text
    assert set(response.json()) == {"error", "detail"}
    assert await stored_uids(ctx) == {existing.uid}
    # Atomic with its events too (SPEC §11): no device_provisioned for the refused batch.
    provisioned = await events(client, admin, type="device_provisioned")
    assert {e["device_uid"] for e in provisioned} == {existing.uid}


async def test_a_uid_twice_in_one_batch_is_refused_and_nothing_is_written(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    response = await post_devices(client, admin, uids=["TWICETWICETWICE00001", "twicetwicetwice00001"])
    assert response.status_code in (409, 422), response.text
    assert await stored_uids(ctx) == set()


async def test_the_given_name_is_the_devices_name(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    (device,) = await provision(client, admin, name="Kitchen lamp", model="lamp-9")
    response = await client.post(
        "/v1/devices/bind", json={"uid": device.uid, "claim_code": device.claim_code}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    body = (await get_device(client, owner, device.uid)).json()
    assert (body["name"], body["model"]) == ("Kitchen lamp", "lamp-9")


async def test_each_provisioned_device_writes_an_event_with_actor_and_ip(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    manufacturer, admin = await staff(users, ctx, "manufacturer"), await staff(users, ctx)
    made = await provision(client, manufacturer, count=2)
    for device in made:
        (event,) = await events(client, admin, device_uid=device.uid, type="device_provisioned")
        assert (event["actor_type"], event["actor_id"], event["ip"]) == ("user", manufacturer.id, IP)


# --- secrets stored hashed, shown once ----------------------------------------------------------


async def test_secret_and_claim_code_are_stored_hashed(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin = await staff(users, ctx)
    made = await provision(client, admin, count=3)
    async with ctx.db.read() as tx:
        rows = {row.uid: row for row in await tx.execute(sa.select(tables.devices))}
    dump = await every_stored_value(ctx)
    for device in made:
        row = rows[device.uid]
        assert row.secret_hash and row.secret_hash != device.secret
        assert row.claim_code_hash and row.claim_code_hash != device.claim_code
        plain_code = device.claim_code.replace("-", "")
        for plaintext in (device.secret, device.claim_code, plain_code, plain_code.lower()):
            assert plaintext not in dump, f"{plaintext!r} is stored in clear"


async def test_pairing_tokens_are_stored_hashed(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    owner = await person(users)
    response = await client.post("/v1/devices/pairing-tokens", headers=owner.headers)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    token = response.json()["pairing_token"]
    async with ctx.db.read() as tx:
        (row,) = list(await tx.execute(sa.select(tables.pairing_tokens)))
    assert row.user_id == owner.id
    assert row.token_hash != token
    assert token not in await every_stored_value(ctx)


async def test_secret_and_claim_code_are_shown_only_at_provisioning(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await bound_device(client, admin, owner)
    answers = [
        await get_device(client, owner, device.uid),
        await client.get("/v1/devices", headers=owner.headers),
        await client.get("/v1/admin/devices", headers=admin.headers),
        await client.get("/v1/admin/events", params={"device_uid": device.uid}, headers=admin.headers),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert device.secret not in response.text
        assert device.claim_code not in response.text
        assert device.claim_code.replace("-", "") not in response.text


# --- what a user sees ---------------------------------------------------------------------------


async def test_device_list_has_owned_and_shared_devices_with_the_callers_role(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, me, friend = await staff(users, ctx), await person(users), await person(users)
    mine = await bound_device(client, admin, me)
    theirs = await bound_device(client, admin, friend)
    await bound_device(client, admin, friend)  # not shared: not in my list
    await provision(client, admin)  # unbound: in nobody's list
    assert (await share(client, friend, theirs.uid, me, "controller")).status_code == 201
    response = await client.get("/v1/devices", headers=me.headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-total-count"] == "2"
    listed = response.json()
    for row in listed:
        assert set(row) == LIST_KEYS, row
        assert row["online"] is False
        assert row["last_seen"] is None
        assert row["model"] == "lamp-1"
    assert {row["uid"]: row["role"] for row in listed} == {mine.uid: "owner", theirs.uid: "controller"}


async def test_device_list_takes_limit_and_offset(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, me = await staff(users, ctx), await person(users)
    for _ in range(4):
        await bound_device(client, admin, me)
    everything = [row["uid"] for row in (await client.get("/v1/devices", headers=me.headers)).json()]
    page = await client.get("/v1/devices", params={"limit": 2, "offset": 1}, headers=me.headers)
    assert page.status_code == 200, page.text
    assert page.headers["x-total-count"] == "4"
    assert [row["uid"] for row in page.json()] == everything[1:3]


async def test_an_empty_device_list_is_an_empty_array(client: httpx.AsyncClient, users: Users) -> None:
    me = await person(users)
    response = await client.get("/v1/devices", headers=me.headers)
    assert response.status_code == 200, response.text
    assert response.json() == []
    assert response.headers["x-total-count"] == "0"


async def test_one_device_has_every_field_of_spec(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await bound_device(client, admin, owner)
    response = await get_device(client, owner, device.uid)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == DETAIL_KEYS, body
    assert body["uid"] == device.uid
    assert body["role"] == "owner"
    assert body["owner_id"] == owner.id
    assert body["online"] is False
    assert body["connected_at"] is None and body["ip"] is None and body["region"] is None


async def test_a_device_is_found_by_its_uid_in_lower_case(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner = await staff(users, ctx), await person(users)
    device = await bound_device(client, admin, owner)
    response = await get_device(client, owner, device.uid.lower())
    assert response.status_code == 200, response.text
    assert response.json()["uid"] == device.uid


async def test_an_unknown_device_is_404(client: httpx.AsyncClient, users: Users) -> None:
    me = await person(users)
    assert_error(await get_device(client, me, "NOSUCHDEVICE00000001"), 404, "not_found")
