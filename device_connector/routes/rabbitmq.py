"""RabbitMQ 3.10+ HTTP auth backend (`rabbitmq_auth_backend_http`, SPEC §6 "On a clustered broker"):
form-encoded requests in, `allow` or `deny` as text out. RabbitMQ sends no headers of ours, so the
hook secret travels in the URL (`?secret=`); access logs must not print query strings (uvicorn's
does: the CLI turns it off for these paths). The rules are the embedded broker's."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from device_connector.acl import Action, Channel, Grants, allowed, may_publish, may_subscribe
from device_connector.gate import USER_ID, client_id_allowed, is_device_name
from device_connector.routes.hooks import admit, body_of, grants_for, secret_ok, text
from shared.context import Context
from shared.deps import CtxDep

router = APIRouter(tags=["broker hooks"], prefix="/v1/mqtt/rabbitmq")
EXCHANGE = "amq.topic"  # the MQTT plugin's exchange (`mqtt.exchange`)
# The MQTT plugin's queue of one client's subscriptions, one per QoS.
QUEUE_SUFFIXES = ("qos0", "qos1")


def _answer(ok: bool) -> PlainTextResponse:
    return PlainTextResponse("allow" if ok else "deny")


def ours(username: str, client_id: str) -> bool:
    """A device or a user of ours, with a client id the CONNECT rules allow (SPEC §6)."""
    device = is_device_name(username)
    if not device and not USER_ID.fullmatch(username):
        return False
    return client_id_allowed(client_id, username, device=device)


async def _form(request: Request, ctx: Context) -> dict[str, object] | None:
    body = await body_of(request)
    if body is None or not secret_ok(ctx, request.query_params.get("secret", "")):
        return None
    return body


@router.post("/user")
async def user(request: Request, ctx: CtxDep) -> PlainTextResponse:
    body = await _form(request, ctx)
    client_id = text(body, "client_id") if body is not None else ""
    if body is None or not client_id:  # no client id: not an MQTT CONNECT (a management-UI login, AMQP)
        return _answer(False)
    # RabbitMQ sends no client address with `user` (the request's own peer is the broker node): a
    # refusal's event carries none rather than the broker's.
    admission = await admit(
        ctx, client_id=client_id, username=text(body, "username"), password=text(body, "password"), ip=None
    )
    return _answer(admission is not None)


@router.post("/vhost")
async def vhost(request: Request, ctx: CtxDep) -> PlainTextResponse:
    body = await _form(request, ctx)
    if body is None:
        return _answer(False)
    username, client_id = text(body, "username"), text(body, "client_id")
    return _answer(text(body, "vhost") == ctx.settings.mqtt_vhost and (not client_id or ours(username, client_id)))


def resource_allowed(*, username: str, client_id: str, resource: str, name: str, permission: str) -> bool:
    """Only what the MQTT plugin needs for this client: its own subscription queues, and publishing to
    and binding on the MQTT exchange."""
    if resource == "queue":
        owner = name.removeprefix("mqtt-subscription-")
        if owner == name or not owner.endswith(QUEUE_SUFFIXES):
            return False
        owner = owner[: -len("qos0")]
        if client_id and owner != client_id:
            return False
        return ours(username, owner) and permission in ("configure", "write", "read")
    if resource == "exchange":
        return name == EXCHANGE and permission in ("write", "read")
    return False


@router.post("/resource")
async def resource(request: Request, ctx: CtxDep) -> PlainTextResponse:
    body = await _form(request, ctx)
    if body is None or text(body, "vhost") != ctx.settings.mqtt_vhost:
        return _answer(False)
    username, client_id = text(body, "username"), text(body, "client_id")
    if client_id and not ours(username, client_id):
        return _answer(False)
    return _answer(
        resource_allowed(
            username=username,
            client_id=client_id,
            resource=text(body, "resource"),
            name=text(body, "name"),
            permission=text(body, "permission"),
        )
    )


_SWAP = str.maketrans("./", "/.")


def mqtt_topic(routing_key: str) -> str:
    """RabbitMQ's MQTT plugin swaps `/` and `.` between topics and routing keys, and `+` becomes `*`."""
    swapped = routing_key.translate(_SWAP)
    return "/".join("+" if level == "*" else level for level in swapped.split("/"))


def may_bind(grants: Grants, topic_filter: str) -> bool:
    """RabbitMQ checks a subscription once, when it is bound, never per message: a wildcard is allowed
    only if every channel it could match is one the client may read now. None is, for a device
    (it publishes its replies, state and events) or a user (commands are never readable)."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return may_subscribe(grants, topic_filter)
    if not may_subscribe(grants, topic_filter):
        return False
    uid = topic_filter.split("/")[1]
    return all(allowed(grants, uid, channel, Action.SUBSCRIBE) for channel in Channel)


@router.post("/topic")
async def topic(request: Request, ctx: CtxDep) -> PlainTextResponse:
    body = await _form(request, ctx)
    if body is None or text(body, "vhost") != ctx.settings.mqtt_vhost or text(body, "name") != EXCHANGE:
        return _answer(False)
    username = text(body, "username")
    client_id = text(body, "variable_map.client_id") or text(body, "client_id")
    if not ours(username, client_id):
        return _answer(False)
    grants = await grants_for(ctx, client_id, username)
    if grants is None:
        return _answer(False)
    mqtt = mqtt_topic(text(body, "routing_key"))
    permission = text(body, "permission")
    if permission == "write":
        return _answer(may_publish(grants, mqtt))
    if permission == "read":
        return _answer(may_bind(grants, mqtt))
    return _answer(False)
