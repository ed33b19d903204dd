"""The device connector as a service: its broker (embedded or clustered) and its HTTP routes."""

from __future__ import annotations

from fastapi import APIRouter

from device_connector.connector import Connector
from device_connector.routes import devices, hooks, rabbitmq
from shared.context import Context

router = APIRouter()
router.include_router(devices.router)
router.include_router(hooks.router)
router.include_router(rabbitmq.router)


async def on_start(ctx: Context) -> None:
    connector = Connector(ctx)
    await connector.start()
    ctx.extras["connector"] = connector
    ctx.extras.setdefault("readiness", {})["broker"] = connector.ready


async def on_stop(ctx: Context) -> None:
    ctx.extras.get("readiness", {}).pop("broker", None)
    connector = ctx.extras.pop("connector", None)
    if connector is not None:
        await connector.stop()
