"""The device manager as a service: its routes, mounted by shared.app.create_app."""

from __future__ import annotations

from fastapi import APIRouter

from device_manager.routes import admin, devices

router = APIRouter()
router.include_router(admin.router)
router.include_router(devices.router)
