"""The device connector as a service: its broker (embedded or clustered) and its HTTP routes."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter

from device_connector.connector import CONNECTOR, Connector
from device_connector.routes import devices, hooks, rabbitmq
from shared.context import Context
from shared.settings import Settings

# Mounted flat by shared.app (each router's own routes, no nesting to walk per request).
routers: tuple[APIRouter, ...] = (
    devices.router,
    hooks.router,
    rabbitmq.router,
)


async def on_start(ctx: Context) -> None:
    connector = Connector(ctx)
    try:
        await connector.start()
    except BaseException:  # a start cut short (a stop signal, a broker that cannot start): undo what ran
        with contextlib.suppress(Exception):
            await connector.stop()
        raise
    ctx.services.put(CONNECTOR, connector)
    ctx.readiness["broker"] = connector.ready
    if not ctx.settings.clustered_broker:
        # Where clients find the embedded broker: in /readyz and the discovery document, so that the
        # SDKs and `handshake demo` ask instead of assuming 1883 (which may be another broker).
        ctx.mqtt_listener = mqtt_listener(ctx.settings)


def mqtt_listener(settings: Settings) -> dict[str, int]:
    """The embedded broker's ports: `port` for plain MQTT, `tls_port` for MQTT over TLS; a listener
    that is not there is left out."""
    listener = {"port": settings.mqtt_port} if settings.mqtt_plain else {}
    if settings.tls:
        listener["tls_port"] = settings.mqtt_tls_port
    return listener


async def on_stop(ctx: Context) -> None:
    ctx.readiness.pop("broker", None)
    ctx.mqtt_listener = None
    connector = ctx.services.pop(CONNECTOR)
    if connector is not None:
        await connector.stop()
