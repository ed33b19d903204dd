"""Sharing and transfer (SPEC §5), and the activity event every change writes (SPEC §7)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import sqlalchemy as sa

from shared import tables
from shared.context import Context
from tests.conftest import Users
from tests.device_manager import (
    IP,
    Person,
    assert_error,
    bind,
    bound_device,
    device_token,
    events,
    get_device,
    person,
    provision,
    share,
    staff,
)


async def shares_of(client: httpx.AsyncClient, owner: Person, uid: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/devices/{uid}/shares", headers=owner.headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


async def transfer(client: httpx.AsyncClient, owner: Person, uid: str, to: Person) -> httpx.Response:
    return await client.post(f"/v1/devices/{uid}/transfer", json={"username": to.username}, headers=owner.headers)


async def unshare(client: httpx.AsyncClient, caller: Person, uid: str, sharee: Person) -> httpx.Response:
    return await client.delete(f"/v1/devices/{uid}/shares/{sharee.id}", headers=caller.headers)


# --- share --------------------------------------------------------------------------------------


async def test_a_share_gives_the_sharee_its_role(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner, viewer, controller = (
        await staff(users, ctx),
        await person(users),
        await person(users),
        await person(users),
    )
    device = await bound_device(client, admin, owner)
    assert (await share(client, owner, device.uid, viewer, "viewer")).status_code == 201
    assert (await share(client, owner, device.uid, controller, "controller")).status_code == 201
    for sharee, role in ((viewer, "viewer"), (controller, "controller")):
        body = (await get_device(client, sharee, device.uid)).json()
        assert (body["role"], body["owner_id"]) == (role, owner.id)
        listed = (await client.get("/v1/devices", headers=sharee.headers)).json()
        assert [(row["uid"], row["role"]) for row in listed] == [(device.uid, role)]
    listed_shares = await shares_of(client, owner, device.uid)
    assert {(s["user_id"], s["role"]) for s in listed_shares} == {(viewer.id, "viewer"), (controller.id, "controller")}


async def test_sharing_takes_only_viewer_or_controller(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner, friend = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, owner)
    for role in ("owner", "admin", ""):
        response = await share(client, owner, device.uid, friend, role)
        assert response.status_code == 422, response.text
    assert_error(await get_device(client, friend, device.uid), 404, "not_found")


async def test_sharing_again_changes_the_role(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner, friend = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, owner)
    assert (await share(client, owner, device.uid, friend, "viewer")).status_code == 201
    assert (await share(client, owner, device.uid, friend, "controller")).status_code == 201
    assert (await get_device(client, friend, device.uid)).json()["role"] == "controller"
    assert [s["role"] for s in await shares_of(client, owner, device.uid)] == ["controller"]


# --- unshare ------------------------------------------------------------------------------------


async def test_the_owner_removes_a_share(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner, friend = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, owner)
    assert (await share(client, owner, device.uid, friend, "controller")).status_code == 201
    response = await unshare(client, owner, device.uid, friend)
    assert response.status_code == 204, response.text
    assert_error(await get_device(client, friend, device.uid), 404, "not_found")
    assert await shares_of(client, owner, device.uid) == []


async def test_the_sharee_leaves_a_share(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner, friend = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, owner)
    assert (await share(client, owner, device.uid, friend, "viewer")).status_code == 201
    response = await unshare(client, friend, device.uid, friend)
    assert response.status_code == 204, response.text
    assert_error(await get_device(client, friend, device.uid), 404, "not_found")
    assert (await get_device(client, owner, device.uid)).json()["role"] == "owner"


# --- transfer -----------------------------------------------------------------------------------


async def test_transfer_makes_the_named_user_owner_and_removes_the_old_owner(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, seller, buyer = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, seller)
    response = await transfer(client, seller, device.uid, buyer)
    assert response.status_code == 200, response.text
    body = (await get_device(client, buyer, device.uid)).json()
    assert (body["role"], body["owner_id"]) == ("owner", buyer.id)
    # The old owner loses all access: not even visible any more.
    assert_error(await get_device(client, seller, device.uid), 404, "not_found")
    assert (await client.get("/v1/devices", headers=seller.headers)).json() == []
    rename = await client.patch(f"/v1/devices/{device.uid}", json={"name": "mine"}, headers=seller.headers)
    assert_error(rename, 404, "not_found")
    assert_error(await transfer(client, seller, device.uid, seller), 404, "not_found")
    # The new owner has every owner right.
    assert (await share(client, buyer, device.uid, seller, "viewer")).status_code == 201
    assert (await get_device(client, seller, device.uid)).json()["role"] == "viewer"


async def test_transfer_to_a_sharee_makes_them_owner_not_sharee(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner, family = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, owner)
    assert (await share(client, owner, device.uid, family, "viewer")).status_code == 201
    assert (await transfer(client, owner, device.uid, family)).status_code == 200
    assert (await get_device(client, family, device.uid)).json()["role"] == "owner"
    assert all(s["user_id"] != family.id for s in await shares_of(client, family, device.uid))
    assert_error(await get_device(client, owner, device.uid), 404, "not_found")


async def test_after_transfer_the_old_claim_code_does_not_take_the_device_back(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, seller, buyer = await staff(users, ctx), await person(users), await person(users)
    device = await bound_device(client, admin, seller)
    assert (await transfer(client, seller, device.uid, buyer)).status_code == 200
    assert_error(await bind(client, seller, device.uid, device.claim_code), 409, "already_bound")
    async with ctx.db.read() as tx:
        stmt = sa.select(tables.devices.c.owner_id).where(tables.devices.c.uid == device.uid)
        assert (await tx.execute(stmt)).scalar_one() == buyer.id


# --- events -------------------------------------------------------------------------------------


async def test_every_device_change_writes_its_event_with_actor_device_and_ip(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin, owner, friend, buyer = await staff(users, ctx), await person(users), await person(users), await person(users)
    (device,) = await provision(client, admin)
    uid = device.uid
    assert (await device_token(client, uid, device.secret)).status_code == 200
    assert (await bind(client, owner, uid, device.claim_code)).status_code == 201
    assert (await share(client, owner, uid, friend, "viewer")).status_code == 201
    assert (await unshare(client, owner, uid, friend)).status_code == 204
    assert (await transfer(client, owner, uid, buyer)).status_code == 200
    assert (await client.delete(f"/v1/devices/{uid}/binding", headers=buyer.headers)).status_code == 204
    assert (await client.post(f"/v1/admin/devices/{uid}/disable", headers=admin.headers)).status_code == 200

    expected = [
        ("device_provisioned", "user", admin.id),
        ("device_token_issued", "device", uid),
        ("device_bound", "user", owner.id),
        ("device_shared", "user", owner.id),
        ("device_unshared", "user", owner.id),
        ("device_transferred", "user", owner.id),
        ("device_unbound", "user", buyer.id),
        ("device_disabled", "user", admin.id),
    ]
    found = list(reversed(await events(client, admin, device_uid=uid)))  # newest first on the wire
    assert [(e["type"], e["actor_type"], e["actor_id"]) for e in found] == expected
    for event in found:
        assert event["device_uid"] == uid
        assert event["ip"] == IP
    by_type = {event["type"]: event for event in found}
    # The detail names who gained or lost access, where SPEC §7 leaves its shape to us: check it is there.
    assert friend.id in repr(by_type["device_shared"]["detail"])
    assert friend.id in repr(by_type["device_unshared"]["detail"])
    assert buyer.id in repr(by_type["device_transferred"]["detail"])


# --- races: one winner (SPEC §11) -----------------------------------------------------------------


async def stored_owner(ctx: Context, uid: str) -> str | None:
    async with ctx.db.read() as tx:
        found = await tx.execute(sa.select(tables.devices.c.owner_id).where(tables.devices.c.uid == uid))
        owner: str | None = found.scalar_one()
    return owner


async def test_two_concurrent_transfers_have_one_winner(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    """On PostgreSQL both used to succeed, and once the one told 200 did not own the device (issue 17)."""
    admin = await staff(users, ctx)
    for _ in range(8):
        owner, first, second = await person(users), await person(users), await person(users)
        device = await bound_device(client, admin, owner)
        answers = await asyncio.gather(
            transfer(client, owner, device.uid, first), transfer(client, owner, device.uid, second)
        )
        statuses = sorted(response.status_code for response in answers)
        assert statuses == [200, 404], [(r.status_code, r.text) for r in answers]
        (won,) = [r.json() for r in answers if r.status_code == 200]
        assert await stored_owner(ctx, device.uid) == won["owner_id"]
        kinds = [e["type"] for e in await events(client, admin, device_uid=device.uid, type="device_transferred")]
        assert kinds == ["device_transferred"], kinds


async def test_a_transfer_and_an_unbind_at_once_have_one_winner(
    client: httpx.AsyncClient, users: Users, ctx: Context
) -> None:
    admin = await staff(users, ctx)
    for _ in range(8):
        owner, heir = await person(users), await person(users)
        device = await bound_device(client, admin, owner)
        moved, released = await asyncio.gather(
            transfer(client, owner, device.uid, heir),
            client.delete(f"/v1/devices/{device.uid}/binding", headers=owner.headers),
        )
        assert sorted((moved.status_code, released.status_code)) in ([200, 404], [204, 404]), (
            moved.text,
            released.text,
        )
        expected = heir.id if moved.status_code == 200 else None
        assert await stored_owner(ctx, device.uid) == expected


async def test_the_device_list_pages_with_its_total(client: httpx.AsyncClient, users: Users, ctx: Context) -> None:
    admin, owner, friend = await staff(users, ctx), await person(users), await person(users)
    mine = [await bound_device(client, admin, owner) for _ in range(2)]
    theirs = await bound_device(client, admin, friend)
    assert (await share(client, friend, theirs.uid, owner, "viewer")).status_code == 201
    expected = sorted([(d.uid, "owner") for d in mine] + [(theirs.uid, "viewer")])
    pages = []
    for offset, count in ((0, 2), (2, 1), (5, 0)):
        response = await client.get("/v1/devices", params={"limit": 2, "offset": offset}, headers=owner.headers)
        assert response.status_code == 200, response.text
        assert response.headers["x-total-count"] == "3", (offset, response.headers)
        assert len(response.json()) == count, (offset, response.json())
        pages += [(row["uid"], row["role"]) for row in response.json()]
    assert pages == expected
    nobody = await person(users)
    response = await client.get("/v1/devices", headers=nobody.headers)
    assert (response.json(), response.headers["x-total-count"]) == ([], "0")
    (row,) = (await client.get("/v1/devices", headers=friend.headers)).json()
    assert set(row) == {"uid", "name", "model", "role", "online", "last_seen"}
