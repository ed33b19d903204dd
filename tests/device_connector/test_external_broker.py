"""The relay through an external broker (SPEC §6 hooks for an external broker), against the real
Mosquitto of this machine: commands and replies, and desired state retained on the broker."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from asgi_lifespan import LifespanManager

from shared.app import create_app
from tests.conftest import Backend, Users, bearer, make_settings

MOSQUITTO = ("127.0.0.1", 1883)


def mosquitto_up() -> bool:
    try:
        with socket.create_connection(MOSQUITTO, timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
async def external_client(backend: Backend, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    if not mosquitto_up():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Mosquitto at 127.0.0.1:1883 is not reachable (CI=true)")
        pytest.skip("Mosquitto at 127.0.0.1:1883 is not reachable")
    settings = make_settings(backend, tmp_path, mqtt_broker_url="mqtt://127.0.0.1:1883")
    if not settings.is_sqlite:
        from tests.conftest import _reset_postgres

        await _reset_postgres(settings)
    app = create_app(settings, migrate=True)
    async with LifespanManager(app) as manager:
        app.state.lifespan_app = manager.app
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


class FakeFirmware:
    """A device on the external broker: answers every command with its params."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.desired: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fw-{uid}")
        self.client.on_connect = lambda c, u, f, r, p=None: (
            c.subscribe([(f"devices/{uid}/commands", 1), (f"devices/{uid}/desired", 1)]),
        )
        self.client.on_subscribe = lambda c, u, mid, codes, p=None: self.ready.set()
        self.client.on_message = self.on_message

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        if message.topic.endswith("/desired"):
            self.desired.append(body)
            return
        reply = {"id": body["id"], "status": "ok", "result": body["params"]}
        client.publish(f"devices/{self.uid}/replies", json.dumps(reply), qos=1)

    def __enter__(self) -> FakeFirmware:
        self.client.connect(*MOSQUITTO)
        self.client.loop_start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def owned_device(http: httpx.AsyncClient, users: Users) -> tuple[dict[str, Any], dict[str, Any]]:
    from account_manager.accounts import create_user
    from shared.models import Role

    ctx = http.app.state.ctx  # type: ignore[attr-defined]
    await create_user(ctx, username="boss", password="correct horse battery", role=Role.ADMIN)
    admin = await users.login("boss")
    device = (await http.post("/v1/admin/devices", json={"model": "plug"}, headers=bearer(admin))).json()["devices"][0]
    _, owner = await users.new()
    bound = await http.post(
        "/v1/devices/bind", json={"uid": device["uid"], "claim_code": device["claim_code"]}, headers=bearer(owner)
    )
    assert bound.status_code == 201
    return device, owner


async def test_command_round_trip_through_mosquitto(external_client: httpx.AsyncClient) -> None:
    users = Users(external_client)
    device, owner = await owned_device(external_client, users)
    with FakeFirmware(device["uid"]):
        reply = await external_client.post(
            f"/v1/devices/{device['uid']}/commands",
            json={"action": "switch", "params": {"on": True}, "timeout": 5},
            headers=bearer(owner),
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "ok"
    assert reply.json()["result"] == {"on": True}


async def test_no_reply_through_mosquitto_is_a_timeout(external_client: httpx.AsyncClient) -> None:
    users = Users(external_client)
    device, owner = await owned_device(external_client, users)
    reply = await external_client.post(
        f"/v1/devices/{device['uid']}/commands", json={"action": "switch", "timeout": 1}, headers=bearer(owner)
    )
    assert reply.status_code == 504
    assert reply.json()["error"] == "device_timeout"


async def test_desired_state_is_retained_on_the_external_broker(external_client: httpx.AsyncClient) -> None:
    users = Users(external_client)
    device, owner = await owned_device(external_client, users)
    put = await external_client.put(
        f"/v1/devices/{device['uid']}/state/desired", json={"brightness": 40}, headers=bearer(owner)
    )
    assert put.status_code == 200
    await asyncio.sleep(0.2)
    with FakeFirmware(device["uid"]) as firmware:  # connects after the fact: gets the retained message
        for _ in range(50):
            if firmware.desired:
                break
            await asyncio.sleep(0.1)
    assert firmware.desired == [{"brightness": 40}]
