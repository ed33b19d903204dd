"""The RabbitMQ HTTP auth backend routes (SPEC §6 "On a clustered broker"), as RabbitMQ's
rabbitmq_auth_backend_http calls them: form bodies, the secret in the URL, `allow`/`deny` text. The
rules are the embedded broker's; the same routes are then driven by a real RabbitMQ cluster in
test_rabbitmq_cluster.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager

from device_connector.routes.hooks import HOOK_GRANTS
from device_connector.routes.rabbitmq import mqtt_topic
from shared.app import create_app
from shared.context import Context
from tests.conftest import Backend, Users, _reset_postgres, make_settings
from tests.device_connector.helpers import World, eventually, make_world
from tests.proxy import TcpProxy

SECRET = "rabbit-hook-secret-" + "y" * 24
BASE = "/v1/mqtt/rabbitmq"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"mqtt_hook_secret": SECRET}


async def ask(client: httpx.AsyncClient, path: str, secret: str | None = SECRET, **form: str) -> str:
    url = f"{BASE}/{path}" + (f"?secret={secret}" if secret is not None else "")
    response = await client.post(url, data=form)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text in ("allow", "deny")
    return response.text


async def login(client: httpx.AsyncClient, username: str, password: str, client_id: str | None, **extra: str) -> str:
    form = {"username": username, "password": password, "vhost": "/", **extra}
    if client_id is not None:
        form["client_id"] = client_id
    return await ask(client, "user", **form)


@pytest.fixture
async def world(client: httpx.AsyncClient, users: Users, ctx: Context) -> World:
    return await make_world(client, users, ctx)


async def test_a_device_logs_in_with_its_uid_as_client_id(client: httpx.AsyncClient, world: World) -> None:
    assert await login(client, world.uid, world.device_token, world.uid) == "allow"
    assert await login(client, world.uid, world.device_token, world.uid + "X") == "deny"
    assert await login(client, world.uid, world.device_token, world.owner.id) == "deny"


async def test_a_user_logs_in_under_the_client_id_rule(client: httpx.AsyncClient, world: World) -> None:
    owner = world.owner
    token = owner.tokens["access_token"]
    assert await login(client, owner.id, token, owner.id) == "allow"
    assert await login(client, owner.id, token, f"{owner.id}-phone") == "allow"
    assert await login(client, owner.id, token, f"{owner.id}-" + "x" * 40) == "allow"
    for bad in (f"{owner.id}-" + "x" * 41, f"{owner.id}-", world.viewer.id, world.uid, f"{owner.id}x"):
        assert await login(client, owner.id, token, bad) == "deny", bad


async def test_a_login_without_client_id_is_denied(client: httpx.AsyncClient, world: World) -> None:
    """A management-UI or AMQP login through the HTTP backend carries no client id."""
    assert await login(client, world.owner.id, world.owner.tokens["access_token"], None) == "deny"


async def test_wrong_kind_wrong_subject_and_garbage_tokens_are_denied(client: httpx.AsyncClient, world: World) -> None:
    owner_token = world.owner.tokens["access_token"]
    assert await login(client, world.uid, owner_token, world.uid) == "deny"  # a user token as a device
    assert await login(client, world.owner.id, world.device_token, world.owner.id) == "deny"  # and back
    assert await login(client, world.viewer.id, owner_token, world.viewer.id) == "deny"  # another user's
    for garbage in ("", "x", "a.b.c", "\u00e9" * 50, "A" * 10_000):
        assert await login(client, world.uid, garbage, world.uid) == "deny"


async def test_a_revoked_session_is_denied(client: httpx.AsyncClient, world: World) -> None:
    token = world.owner.tokens["access_token"]
    assert await login(client, world.owner.id, token, world.owner.id) == "allow"
    assert (await client.post("/v1/auth/logout", headers=world.owner.headers)).status_code == 204
    assert await login(client, world.owner.id, token, world.owner.id) == "deny"


async def test_a_disabled_device_is_denied(client: httpx.AsyncClient, world: World) -> None:
    disabled = await client.post(f"/v1/admin/devices/{world.uid}/disable", headers=world.admin.headers)
    assert disabled.status_code in (200, 204), disabled.text
    assert await login(client, world.uid, world.device_token, world.uid) == "deny"


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x", SECRET[:-1]])
async def test_every_route_denies_without_the_right_secret(
    client: httpx.AsyncClient, world: World, secret: str | None
) -> None:
    forms = {
        "user": {"username": world.uid, "password": world.device_token, "vhost": "/", "client_id": world.uid},
        "vhost": {"username": world.uid, "vhost": "/", "ip": "127.0.0.1", "client_id": world.uid},
        "resource": {
            "username": world.uid,
            "vhost": "/",
            "resource": "exchange",
            "name": "amq.topic",
            "permission": "write",
            "client_id": world.uid,
        },
        "topic": {
            "username": world.uid,
            "vhost": "/",
            "resource": "topic",
            "name": "amq.topic",
            "permission": "write",
            "routing_key": f"devices.{world.uid}.state",
            "variable_map.client_id": world.uid,
        },
    }
    for path, form in forms.items():
        assert await ask(client, path, secret=SECRET, **form) == "allow", path
        assert await ask(client, path, secret=secret, **form) == "deny", path


@pytest.mark.parametrize("path", ["user", "vhost", "resource", "topic"])
async def test_garbage_bodies_are_denied_never_a_500(client: httpx.AsyncClient, path: str) -> None:
    url = f"{BASE}/{path}?secret={SECRET}"
    bodies: list[dict[str, Any]] = [
        {"content": b""},
        {"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        {"content": b"not json", "headers": {"content-type": "application/json"}},
        {"json": ["a", "list"]},
        {"json": {"username": 5, "password": None, "client_id": {"a": 1}}},
        {"data": {"username": "x" * 5000, "password": "y" * 50_000, "client_id": "z" * 5000}},
    ]
    for body in bodies:
        response = await client.post(url, **body)
        assert response.status_code in (200, 413), response.text
        if response.status_code == 200:
            assert response.text == "deny", (body, response.text)


async def test_only_the_configured_vhost(client: httpx.AsyncClient, world: World) -> None:
    base = {"username": world.uid, "ip": "127.0.0.1", "client_id": world.uid}
    assert await ask(client, "vhost", vhost="/", **base) == "allow"
    assert await ask(client, "vhost", vhost="other", **base) == "deny"
    assert await ask(client, "vhost", vhost="/", username=world.uid, client_id=world.owner.id) == "deny"


@pytest.mark.parametrize(
    ("resource", "name", "permission", "expected"),
    [
        ("queue", "mqtt-subscription-{me}qos1", "configure", "allow"),
        ("queue", "mqtt-subscription-{me}qos0", "read", "allow"),
        ("queue", "mqtt-subscription-{me}qos1", "write", "allow"),
        ("queue", "mqtt-subscription-{other}qos1", "read", "deny"),
        ("queue", "mqtt-subscription-{other}qos1", "configure", "deny"),
        ("queue", "some-queue", "read", "deny"),
        ("queue", "mqtt-subscription-{me}qos2", "read", "deny"),
        ("exchange", "amq.topic", "write", "allow"),
        ("exchange", "amq.topic", "read", "allow"),
        ("exchange", "amq.topic", "configure", "deny"),
        ("exchange", "amq.direct", "write", "deny"),
        ("exchange", "amq.rabbitmq.event", "read", "deny"),
    ],
)
async def test_resources_only_what_the_mqtt_plugin_needs(
    client: httpx.AsyncClient, world: World, resource: str, name: str, permission: str, expected: str
) -> None:
    name = name.format(me=world.uid, other=world.owner.id)
    form = {"username": world.uid, "vhost": "/", "resource": resource, "name": name, "permission": permission}
    assert await ask(client, "resource", client_id=world.uid, **form) == expected


def topic_form(username: str, client_id: str, topic: str, permission: str) -> dict[str, str]:
    key = topic.translate(str.maketrans("/.", "./")).replace("+", "*")
    return {
        "username": username,
        "vhost": "/",
        "resource": "topic",
        "name": "amq.topic",
        "permission": permission,
        "routing_key": key,
        "variable_map.client_id": client_id,
        "variable_map.username": username,
        "variable_map.vhost": "/",
    }


# SPEC §6's table, as RabbitMQ asks it: write = publish, read = subscribe (checked at bind time).
TABLE = [
    # (who, channel, permission, allowed)
    ("device", "commands", "read", True),
    ("device", "commands", "write", False),
    ("device", "replies", "write", True),
    ("device", "replies", "read", False),
    ("device", "state", "write", True),
    ("device", "events", "write", True),
    ("device", "desired", "read", True),
    ("device", "desired", "write", False),
    ("owner", "commands", "write", True),
    ("owner", "commands", "read", False),
    ("owner", "replies", "read", True),
    ("owner", "state", "read", True),
    ("owner", "state", "write", False),
    ("owner", "desired", "read", True),
    ("owner", "desired", "write", False),
    ("controller", "commands", "write", True),
    ("controller", "replies", "read", True),
    ("controller", "events", "read", True),
    ("viewer", "commands", "write", False),
    ("viewer", "replies", "read", False),
    ("viewer", "state", "read", True),
    ("viewer", "events", "read", True),
    ("viewer", "desired", "read", True),
    ("stranger", "state", "read", False),
    ("stranger", "commands", "write", False),
    ("other-device", "commands", "read", False),
    ("other-device", "state", "write", False),
]


@pytest.mark.parametrize(("who", "channel", "permission", "expected"), TABLE)
async def test_topic_acl_table(
    client: httpx.AsyncClient, world: World, who: str, channel: str, permission: str, expected: bool
) -> None:
    if who == "device":
        username = world.uid
    elif who == "other-device":
        username = "Z" * 20
    else:
        username = getattr(world, who).id
    form = topic_form(username, username, f"devices/{world.uid}/{channel}", permission)
    assert await ask(client, "topic", **form) == ("allow" if expected else "deny")


@pytest.mark.parametrize("topic_filter", ["devices/{uid}/+", "devices/{uid}/#", "devices/+/state", "#", "devices/#"])
async def test_wildcards_are_denied_as_rabbitmq_checks_them_once(
    client: httpx.AsyncClient, world: World, topic_filter: str
) -> None:
    topic_filter = topic_filter.format(uid=world.uid)
    for username in (world.uid, world.owner.id, world.viewer.id):
        assert await ask(client, "topic", **topic_form(username, username, topic_filter, "read")) == "deny"


async def test_topic_checks_follow_role_changes(client: httpx.AsyncClient, world: World, ctx: Context) -> None:
    form = topic_form(world.viewer.id, world.viewer.id, f"devices/{world.uid}/state", "read")
    assert await ask(client, "topic", **form) == "allow"
    removed = await client.delete(f"/v1/devices/{world.uid}/shares/{world.viewer.id}", headers=world.owner.headers)
    assert removed.status_code == 204
    # Asked of a process that did not answer the CONNECT (or past the grants' TTL): read afresh.
    ctx.services.pop(HOOK_GRANTS)
    assert await ask(client, "topic", **form) == "deny"


async def test_topic_of_a_client_id_that_breaks_the_rules_is_denied(client: httpx.AsyncClient, world: World) -> None:
    form = topic_form(world.owner.id, world.uid, f"devices/{world.uid}/state", "read")
    assert await ask(client, "topic", **form) == "deny"
    other_exchange = {**topic_form(world.uid, world.uid, f"devices/{world.uid}/state", "write"), "name": "amq.direct"}
    assert await ask(client, "topic", **other_exchange) == "deny"


@pytest.mark.parametrize(
    ("routing_key", "topic"),
    [
        ("devices.ABC.state", "devices/ABC/state"),
        ("devices.ABC.*", "devices/ABC/+"),
        ("devices.ABC.#", "devices/ABC/#"),
        ("a/b.c", "a.b/c"),
    ],
)
def test_routing_keys_become_mqtt_topics(routing_key: str, topic: str) -> None:
    assert mqtt_topic(routing_key) == topic


@pytest.mark.parametrize("cut_what", ["redis", "database"])
async def test_every_hook_denies_while_a_backend_is_down(
    backend: Backend, tmp_path: Path, proxy: TcpProxy, cut_what: str
) -> None:
    """Fail closed (SPEC §11): with Redis or PostgreSQL cut, no hook allows anything, and once the
    backend is back they allow again by themselves."""
    if backend.name != "postgres":
        pytest.skip("a backend behind a proxy: the PostgreSQL + Redis run")
    assert backend.database_url is not None and backend.redis_url is not None
    overrides: dict[str, Any] = {"mqtt_hook_secret": SECRET}
    if cut_what == "redis":
        parts = urlsplit(backend.redis_url)
        overrides["redis_url"] = f"redis://{proxy.forward_to(parts.hostname or '127.0.0.1', parts.port or 6379)}/0"
    else:
        parts = urlsplit(backend.database_url)
        via = proxy.forward_to(parts.hostname or "127.0.0.1", parts.port or 5432)
        overrides["database_url"] = backend.database_url.replace(parts.netloc.rsplit("@", 1)[-1], via)
    settings = make_settings(backend, tmp_path, **overrides)
    await _reset_postgres(settings)
    application = create_app(settings, migrate=True)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            try:
                world = await make_world(http, Users(http), application.state.ctx)
                forms = {
                    "user": {
                        "username": world.uid,
                        "password": world.device_token,
                        "vhost": "/",
                        "client_id": world.uid,
                    },
                    "topic": topic_form(world.uid, world.uid, f"devices/{world.uid}/state", "write"),
                }
                for path, form in forms.items():
                    assert await ask(http, path, **form) == "allow", path
                proxy.down()
                ctx: Context = application.state.ctx

                def unconfirmed() -> bool:
                    return not ctx.revocations.confirmed

                assert await eventually(unconfirmed, timeout=settings.revocation_max_staleness + 5)
                for path, form in forms.items():
                    answer = await asyncio.wait_for(ask(http, path, **form), timeout=10)
                    assert answer == "deny", path
                proxy.up()
                assert await eventually(lambda: ctx.revocations.confirmed, timeout=15)
                assert await ask(http, "user", **forms["user"]) == "allow"
            finally:
                proxy.up()
