"""The account manager as a service: its routes, mounted by shared.app.create_app."""

from __future__ import annotations

from fastapi import APIRouter

from account_manager.routes import admin, auth, clients, dashboard, device, oauth, users

router = APIRouter()
router.include_router(auth.router)
router.include_router(users.router)
router.include_router(admin.router)
router.include_router(clients.router)
router.include_router(oauth.router)
router.include_router(device.router)
router.include_router(dashboard.router)
