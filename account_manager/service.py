"""The account manager as a service: its routes, mounted by shared.app.create_app."""

from __future__ import annotations

from fastapi import APIRouter

from account_manager.routes import admin, auth, clients, dashboard, device, oauth, users

# Mounted flat by shared.app (each router's own routes, no nesting to walk per request).
routers: tuple[APIRouter, ...] = (
    auth.router,
    users.router,
    admin.router,
    clients.router,
    oauth.router,
    device.router,
    dashboard.router,
)
