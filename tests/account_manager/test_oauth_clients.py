"""Registered OAuth clients (SPEC §12): `POST /v1/admin/clients` and the rest of what an admin does with
them, who may, what may be registered, and `handshake clients` on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from shared import tables
from shared.context import Context
from tests.account_manager.flows import DEVICE_GRANT, REGISTERED, Browser, new_verifier, query_of
from tests.account_manager.test_authorization_code import authorize_url, redeem
from tests.conftest import Users, assert_error, bearer
from tests.shared.test_cli import assert_one_line_failure, cli, make_env

APP = {"name": "Lamp app", "redirect_uris": [REGISTERED], "grant_types": ["authorization_code"]}


async def admin_headers(users: Users, ctx: Context, role: str = "admin") -> dict[str, str]:
    _, tokens = await users.admin(ctx, role)
    return bearer(tokens)


async def test_an_admin_registers_a_public_client_without_a_secret(
    client: httpx.AsyncClient, ctx: Context, users: Users
) -> None:
    response = await client.post("/v1/admin/clients", json=APP, headers=await admin_headers(users, ctx))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["type"] == "public" and "client_secret" not in body
    assert body["redirect_uris"] == [REGISTERED]
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["client_id"] and body["created_at"]


async def test_a_confidential_clients_secret_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, ctx: Context, users: Users
) -> None:
    headers = await admin_headers(users, ctx)
    made = await client.post("/v1/admin/clients", json={**APP, "type": "confidential"}, headers=headers)
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    secret = made.json()["client_secret"]
    assert secret.startswith("hcs_") and len(secret) >= 40
    shown = await client.get(f"/v1/admin/clients/{made.json()['client_id']}", headers=headers)
    assert shown.status_code == 200 and "client_secret" not in shown.json() and shown.json()["type"] == "confidential"
    async with ctx.db.read() as tx:
        stored = (await tx.execute(sa.select(tables.oauth_clients.c.secret_hash))).scalar_one()
    assert secret not in stored


async def test_clients_are_listed_with_their_count(client: httpx.AsyncClient, ctx: Context, users: Users) -> None:
    headers = await admin_headers(users, ctx)
    for name in ("one", "two", "three"):
        await client.post("/v1/admin/clients", json={**APP, "name": name}, headers=headers)
    page = await client.get("/v1/admin/clients?limit=2", headers=headers)
    assert page.status_code == 200 and page.headers["x-total-count"] == "3" and len(page.json()) == 2


async def test_support_reads_clients_and_may_not_register_or_delete_one(
    client: httpx.AsyncClient, ctx: Context, users: Users
) -> None:
    made = await client.post("/v1/admin/clients", json=APP, headers=await admin_headers(users, ctx))
    support = await admin_headers(users, ctx, "support")
    assert (await client.get("/v1/admin/clients", headers=support)).status_code == 200
    assert_error(await client.post("/v1/admin/clients", json=APP, headers=support), 403, "forbidden")
    assert_error(await client.delete(f"/v1/admin/clients/{made.json()['client_id']}", headers=support), 403)


async def test_a_user_may_not_register_a_client(client: httpx.AsyncClient, users: Users) -> None:
    _, tokens = await users.new()
    assert_error(await client.post("/v1/admin/clients", json=APP, headers=bearer(tokens)), 403, "forbidden")
    assert_error(await client.post("/v1/admin/clients", json=APP), 401, "invalid_token")


@pytest.mark.parametrize(
    "body",
    [
        {**APP, "redirect_uris": ["http://app.example.com/cb"]},
        {**APP, "redirect_uris": ["javascript:alert(1)"]},
        {**APP, "redirect_uris": ["https://app.example.com/cb#x"]},
        {**APP, "redirect_uris": []},
        {**APP, "redirect_uris": "https://app.example.com/cb"},
        {**APP, "grant_types": ["password"]},
        {**APP, "grant_types": ["refresh_token"]},
        {**APP, "grant_types": []},
        {**APP, "name": ""},
        {**APP, "name": "   "},
        {**APP, "type": "secret"},
        {**APP, "redirect_uris": [f"https://app.example.com/{i}" for i in range(21)]},
        {"redirect_uris": [REGISTERED]},
    ],
)
async def test_a_client_that_may_not_be_registered_is_422(
    client: httpx.AsyncClient, ctx: Context, users: Users, body: dict[str, Any]
) -> None:
    response = await client.post("/v1/admin/clients", json=body, headers=await admin_headers(users, ctx))
    assert_error(response, 422, "validation_error")


async def test_an_unknown_client_is_404(client: httpx.AsyncClient, ctx: Context, users: Users) -> None:
    headers = await admin_headers(users, ctx)
    assert_error(await client.get("/v1/admin/clients/nope", headers=headers), 404, "not_found")
    assert_error(await client.delete("/v1/admin/clients/" + "x" * 100, headers=headers), 404, "not_found")


async def test_deleting_a_client_ends_every_session_issued_to_it(
    app: FastAPI, client: httpx.AsyncClient, ctx: Context, users: Users
) -> None:
    headers = await admin_headers(users, ctx)
    made = (await client.post("/v1/admin/clients", json=APP, headers=headers)).json()
    user, own = await users.new()
    browser = Browser(app)
    verifier = new_verifier()
    location = await browser.authorize(authorize_url(made["client_id"], verifier=verifier), user["username"])
    await browser.close()
    issued = await redeem(client, made["client_id"], query_of(location)["code"], verifier)
    assert issued.status_code == 200, issued.text
    assert (await client.delete(f"/v1/admin/clients/{made['client_id']}", headers=headers)).status_code == 204
    assert_error(await client.get("/v1/users/me", headers=bearer(issued.json())), 401, "invalid_token")
    # The user's own password-login session was no client's: it lives on.
    assert (await client.get("/v1/users/me", headers=bearer(own))).status_code == 200
    assert_error(await client.get(f"/v1/admin/clients/{made['client_id']}", headers=headers), 404)
    async with ctx.db.read() as tx:
        event = (await tx.execute(sa.select(tables.events).where(tables.events.c.type == "client_deleted"))).one()
    assert event.detail == {"client_id": made["client_id"], "sessions_ended": 1}


async def test_registering_a_client_is_an_event(client: httpx.AsyncClient, ctx: Context, users: Users) -> None:
    made = (await client.post("/v1/admin/clients", json=APP, headers=await admin_headers(users, ctx))).json()
    listed = await client.get("/v1/admin/events?type=client_created", headers=await admin_headers(users, ctx))
    assert [event["detail"]["client_id"] for event in listed.json()] == [made["client_id"]]


# --- the command line ---------------------------------------------------------------------------------


def test_clients_create_list_and_delete_on_the_command_line(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    made = cli(
        tmp_path,
        env,
        "clients",
        "create",
        "Hub",
        "--grant-type",
        "device_code",
        "--grant-type",
        "authorization_code",
        "--redirect-uri",
        "com.example.hub:/cb",
        "--confidential",
    )
    assert made.returncode == 0, made.stderr
    client_id = made.stdout.split("client_id ")[1].split()[0]
    assert "client_secret: hcs_" in made.stdout
    listed = cli(tmp_path, env, "clients", "list")
    assert listed.returncode == 0 and client_id in listed.stdout and DEVICE_GRANT in listed.stdout
    gone = cli(tmp_path, env, "clients", "delete", client_id)
    assert gone.returncode == 0, gone.stderr
    assert client_id not in cli(tmp_path, env, "clients", "list").stdout
    assert_one_line_failure(cli(tmp_path, env, "clients", "delete", client_id), "no such client")


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (["clients", "create", "App", "--redirect-uri", "http://evil.example/cb"], "redirect_uris"),
        (["clients", "create", "App"], "redirect_uris"),
        (["clients", "create", "App", "--grant-type", "password", "--redirect-uri", REGISTERED], "grant_types"),
        (["clients", "create"], "name"),
        (["clients", "frobnicate"], "invalid choice"),
    ],
)
def test_clients_create_refuses_bad_input_in_one_line(tmp_path: Path, args: list[str], mention: str) -> None:
    assert_one_line_failure(cli(tmp_path, make_env(tmp_path), *args), mention)
