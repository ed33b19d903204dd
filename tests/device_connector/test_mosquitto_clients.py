"""Our broker with Debian's mosquitto_pub and mosquitto_sub: a second, independent MQTT client
implementation speaking to the embedded broker (SPEC §6)."""

from __future__ import annotations

import asyncio
import os
import shutil

import httpx
import pytest

from shared.context import Context
from shared.settings import Settings
from tests.conftest import Users
from tests.device_connector.helpers import make_world

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None and os.environ.get("CI", "").lower() != "true",
    reason="mosquitto-clients is not installed (apt-get install mosquitto-clients)",
)

RUN_TIMEOUT = 15  # s for one mosquitto_pub or mosquitto_sub


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def broker(settings: Settings) -> list[str]:
    return ["-h", settings.mqtt_host, "-p", str(settings.mqtt_port), "-V", "mqttv311"]


async def test_state_published_by_mosquitto_pub_reaches_a_viewer_on_mosquitto_sub(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    world = await make_world(client, users, ctx)
    topic = f"devices/{world.uid}/state"
    code, _, err = await run(
        "mosquitto_pub",
        *broker(settings),
        "-i",
        world.uid,
        "-u",
        world.uid,
        "-P",
        world.device_token,
        "-t",
        topic,
        "-m",
        '{"on":true}',
        "-r",
        "-q",
        "1",
    )
    assert code == 0, err
    viewer = world.viewer
    code, out, err = await run(
        "mosquitto_sub",
        *broker(settings),
        "-i",
        f"{viewer.id}-cli",
        "-u",
        viewer.id,
        "-P",
        viewer.tokens["access_token"],
        "-t",
        topic,
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "5",
    )
    assert code == 0, err
    assert out.strip() == '{"on":true}'


async def test_mosquitto_pub_with_a_bad_token_is_not_authorised(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    world = await make_world(client, users, ctx)
    code, _, err = await run(
        "mosquitto_pub",
        *broker(settings),
        "-i",
        world.uid,
        "-u",
        world.uid,
        "-P",
        "not-a-token",
        "-t",
        f"devices/{world.uid}/state",
        "-m",
        "x",
    )
    assert code != 0
    assert "not authori" in err.lower(), err


async def test_mosquitto_sub_on_a_wildcard_across_devices_is_denied(
    client: httpx.AsyncClient, users: Users, ctx: Context, settings: Settings
) -> None:
    world = await make_world(client, users, ctx)
    owner = world.owner
    code, out, err = await run(
        "mosquitto_sub",
        *broker(settings),
        "-i",
        owner.id,
        "-u",
        owner.id,
        "-P",
        owner.tokens["access_token"],
        "-t",
        "devices/+/state",
        "-E",
        "-W",
        "5",
    )
    assert "denied" in (out + err).lower(), (code, out, err)
