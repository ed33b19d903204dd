"""The operators' device list (SPEC §5, GET /v1/admin/devices): pages newest first with their total,
SPEC's filters, and `query`, which matches the start of a UID, a model or an owner's username."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.context import Context
from tests.conftest import Users
from tests.device_manager import Person, assert_error, bind, person, provision, staff

LAMP_A = "AB12" + "0" * 16
LAMP_B = "AB34" + "0" * 16
PLUG = "ZZ12" + "0" * 16


async def listed(client: httpx.AsyncClient, reader: Person, **params: Any) -> tuple[list[str], int]:
    """The UIDs of one page, and the total the header gives."""
    response = await client.get("/v1/admin/devices", params=params, headers=reader.headers)
    assert response.status_code == 200, response.text
    return [row["uid"] for row in response.json()], int(response.headers["x-total-count"])


@pytest.fixture
async def fleet(client: httpx.AsyncClient, users: Users, ctx: Context) -> Person:
    """Two lamps and a plug, provisioned in this order; the plug belongs to carol. The admin who reads."""
    admin = await staff(users, ctx)
    await provision(client, admin, uids=[LAMP_A], model="Lamp-3")
    await provision(client, admin, uids=[LAMP_B], model="Lamp-3")
    (plug,) = await provision(client, admin, uids=[PLUG], model="plug-2")
    carol, tokens = await users.new("carol_smith")
    response = await bind(client, Person(carol["id"], carol["username"], tokens), plug.uid, plug.claim_code)
    assert response.status_code == 201, response.text
    return admin


async def test_devices_are_listed_newest_first_and_paged_with_their_total(
    client: httpx.AsyncClient, fleet: Person
) -> None:
    assert await listed(client, fleet) == ([PLUG, LAMP_B, LAMP_A], 3)
    assert await listed(client, fleet, limit=1, offset=1) == ([LAMP_B], 3)
    assert await listed(client, fleet, offset=3) == ([], 3)


async def test_query_matches_the_start_of_a_uid_in_any_case(client: httpx.AsyncClient, fleet: Person) -> None:
    assert await listed(client, fleet, query="ab1") == ([LAMP_A], 1)
    assert await listed(client, fleet, query="AB") == ([LAMP_B, LAMP_A], 2)
    assert await listed(client, fleet, query=PLUG) == ([PLUG], 1)


async def test_query_does_not_match_the_middle_of_a_uid(client: httpx.AsyncClient, fleet: Person) -> None:
    assert await listed(client, fleet, query="12") == ([], 0)


async def test_query_matches_the_start_of_a_model_in_any_case(client: httpx.AsyncClient, fleet: Person) -> None:
    assert await listed(client, fleet, query="lamp") == ([LAMP_B, LAMP_A], 2)
    assert await listed(client, fleet, query="PLUG-2") == ([PLUG], 1)


async def test_query_matches_the_start_of_the_owners_username(client: httpx.AsyncClient, fleet: Person) -> None:
    assert await listed(client, fleet, query="Carol") == ([PLUG], 1)
    assert await listed(client, fleet, query="smith") == ([], 0)


async def test_query_narrows_specs_filters_and_pages_with_the_total_of_its_matches(
    client: httpx.AsyncClient, users: Users, fleet: Person
) -> None:
    assert await listed(client, fleet, query="ab", model="Lamp-3", online="false", limit=1) == ([LAMP_B], 2)
    assert await listed(client, fleet, query="ab", online="true") == ([], 0)
    carol = (await client.get("/v1/admin/users", params={"query": "carol"}, headers=fleet.headers)).json()[0]
    assert await listed(client, fleet, query="zz", owner_id=carol["id"]) == ([PLUG], 1)
    stranger = await person(users)
    assert await listed(client, fleet, query="zz", owner_id=stranger.id) == ([], 0)


@pytest.mark.parametrize("query", ["%", "_", "a%", "\\", "'", "é", "Ω", "\U0010ffff", "z\U0010ffff", " ab "])
async def test_a_query_of_any_characters_is_answered(client: httpx.AsyncClient, fleet: Person, query: str) -> None:
    """Wildcards mean themselves; surrounding spaces are ignored; the last code point has no successor."""
    expected = ([LAMP_B, LAMP_A], 2) if query == " ab " else ([], 0)
    assert await listed(client, fleet, query=query) == expected


async def test_a_query_over_64_characters_is_422(client: httpx.AsyncClient, fleet: Person) -> None:
    response = await client.get("/v1/admin/devices", params={"query": "A" * 65}, headers=fleet.headers)
    assert_error(response, 422, "validation_error")


async def test_support_searches_devices_and_a_user_may_not(
    client: httpx.AsyncClient, users: Users, ctx: Context, fleet: Person
) -> None:
    support = await staff(users, ctx, "support")
    assert await listed(client, support, query="lamp") == ([LAMP_B, LAMP_A], 2)
    user = await person(users)
    response = await client.get("/v1/admin/devices", params={"query": "lamp"}, headers=user.headers)
    assert_error(response, 403, "forbidden")
