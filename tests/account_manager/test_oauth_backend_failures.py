"""The OAuth endpoints when PostgreSQL hangs (SPEC §11): the token endpoint's code and device grants (run by
Authlib in a worker thread, their storage on the event loop), the authorization endpoint and /device answer
503 within seconds, never 500 and never a hang; and once the database answers, so do they."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.account_manager.flows import DEVICE_GRANT, Browser, new_verifier, query_of, register_client
from tests.account_manager.test_authorization_code import authorize_url
from tests.account_manager.test_backend_failures import running
from tests.conftest import Backend, Users, _reset_postgres, make_settings
from tests.proxy import TcpProxy
from tests.shared.test_deadline import ANSWERED_WITHIN


@pytest.fixture
def hung_database(backend: Backend, tmp_path: Path, proxy: TcpProxy) -> Any:
    if backend.name == "sqlite":
        pytest.skip("SQLite is a local file: no peer to hang")
    assert backend.database_url is not None
    parts = urlsplit(backend.database_url)
    via = proxy.forward_to(parts.hostname or "127.0.0.1", parts.port or 5432)
    return make_settings(
        backend, tmp_path, database_url=backend.database_url.replace(parts.netloc.rsplit("@", 1)[-1], via)
    )


async def test_a_hung_database_costs_the_oauth_endpoints_a_few_seconds_and_a_503(
    hung_database: Any, proxy: TcpProxy
) -> None:
    await _reset_postgres(hung_database)
    async with running(hung_database) as (app, http):
        users = Users(http)
        made = await register_client(http, app.state.ctx, users)
        user = await users.register()
        browser = Browser(app)
        verifier = new_verifier()
        location = await browser.authorize(authorize_url(made["client_id"], verifier=verifier), user["username"])
        code = query_of(location)["code"]
        started = (await http.post("/v1/oauth/device_authorization", data={"client_id": made["client_id"]})).json()
        redeem = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": made["client_id"],
            "redirect_uri": location.split("?")[0],
            "code_verifier": verifier,
        }
        poll = {"grant_type": DEVICE_GRANT, "device_code": started["device_code"], "client_id": made["client_id"]}
        try:
            proxy.hang()
            calls = {
                "code redemption": http.post("/v1/auth/token", data=redeem),
                "device poll": http.post("/v1/auth/token", data=poll),
                "authorize": browser.get(authorize_url(made["client_id"], verifier=new_verifier())),
                "device page": browser.get("/device"),
            }
            began = time.monotonic()
            answers = dict(zip(calls, await asyncio.wait_for(asyncio.gather(*calls.values()), 15), strict=True))
            took = time.monotonic() - began
            for name, response in answers.items():
                assert response.status_code == 503, (name, response.status_code, response.text)
            assert took < ANSWERED_WITHIN, took
        finally:
            proxy.up()
        # The code was never used up: once the database answers, it works.
        for _ in range(50):
            again = await http.post("/v1/auth/token", data=redeem)
            if again.status_code != 503:
                break
            await asyncio.sleep(0.2)
        assert again.status_code == 200, again.text
        await browser.close()
