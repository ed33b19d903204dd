"""Fixtures of the OAuth tests (authorization code, device grant, hosted pages)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shared.context import Context
from tests.account_manager.flows import Browser, register_client
from tests.conftest import Users


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[Browser]:
    """A cookie-keeping client of the in-process app, as a system browser would be."""
    opened = Browser(app)
    yield opened
    await opened.close()


@pytest.fixture
async def app_client(client: httpx.AsyncClient, ctx: Context, users: Users) -> dict[str, Any]:
    """An OAuth client an admin registered: both grants, the tests' redirect URI."""
    return await register_client(client, ctx, users)
