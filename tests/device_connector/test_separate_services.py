"""The connector as a process of its own (SPEC §1): it shares PostgreSQL and Redis with the account and
device managers, and their revocations and role changes reach its live MQTT connections through Redis
within 5 s (SPEC §5, §6)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from shared.app import create_app
from shared.context import Context
from shared.settings import Settings
from shared.testing import free_port
from tests.conftest import Backend, Users
from tests.device_connector.helpers import Mqtt, make_world


@pytest.fixture
async def connector_port(backend: Backend, settings: Settings, app: object) -> AsyncIterator[int]:
    """A second process-like app serving only the device connector, on the same database and Redis."""
    if backend.name == "sqlite":
        pytest.skip("separate services share state through PostgreSQL and Redis")
    port = free_port()
    alone = create_app(settings.model_copy(update={"mqtt_port": port}), services=["device-connector"])
    async with LifespanManager(alone, startup_timeout=30, shutdown_timeout=30):
        yield port


async def test_changes_made_elsewhere_reach_the_connectors_connections(
    client: httpx.AsyncClient, users: Users, ctx: Context, connector_port: int
) -> None:
    world = await make_world(client, users, ctx)
    uid, state = world.uid, f"devices/{world.uid}/state"
    clients: list[Mqtt] = []

    async def connect(client_id: str, username: str, password: str) -> Mqtt:
        mqtt = Mqtt(connector_port, client_id, username, password)
        clients.append(mqtt)
        assert await mqtt.connect() == 0
        return mqtt

    try:
        device = await connect(uid, uid, world.device_token)
        viewer = await connect(world.viewer.id, world.viewer.id, world.viewer.tokens["access_token"])
        owner = await connect(world.owner.id, world.owner.id, world.owner.tokens["access_token"])
        assert await viewer.subscribe(state) == [1]
        assert await owner.subscribe(state) == [1]
        await device.publish(state, b'{"n":1}')
        assert await viewer.wait_for(state, b'{"n":1}')

        # The device manager (another process) removes the viewer's share: deliveries stop within 5 s.
        removed = await client.delete(f"/v1/devices/{uid}/shares/{world.viewer.id}", headers=world.owner.headers)
        assert removed.status_code == 204
        await asyncio.sleep(0.2)
        stopped = False
        for n in range(2, 52):
            await device.publish(state, f'{{"n":{n}}}'.encode())
            assert await owner.wait_for(state, f'{{"n":{n}}}'.encode())
            if not await viewer.wait_for(state, f'{{"n":{n}}}'.encode(), timeout=0.1):
                stopped = True
                break
        assert stopped, "the former viewer still receives the device's state"

        # The account manager ends the owner's session: its MQTT connection closes within 5 s.
        assert (await client.post("/v1/auth/logout", headers=world.owner.headers)).status_code == 204
        assert await owner.wait_disconnected(timeout=5)

        # An admin disables the device: its connection closes within 5 s.
        disabled = await client.post(f"/v1/admin/devices/{uid}/disable", headers=world.admin.headers)
        assert disabled.status_code == 200
        assert await device.wait_disconnected(timeout=5)
    finally:
        for mqtt in clients:
            await mqtt.close()
