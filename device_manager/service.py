"""The device manager as a service: its routes, mounted by shared.app.create_app."""

from __future__ import annotations

from fastapi import APIRouter

from device_manager.routes import admin, devices

# Mounted flat by shared.app (each router's own routes, no nesting to walk per request).
routers: tuple[APIRouter, ...] = (
    admin.router,
    devices.router,
)
