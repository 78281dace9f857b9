"""Schemathesis against the running API: no 5xx, no answer that breaks the document."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from api.app import create_app
from api.openapi import build_openapi
from dialer.db import connect_pool
from dialer.settings import Settings
from tests.api.helpers import SIMPLE_DEFINITION
from tests.conftest import make_tenant


@dataclass(frozen=True)
class LiveApi:
    base_url: str
    key: str
    workflow_key: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_api(database_url: str) -> Iterator[LiveApi]:
    """The real app on a real socket, served from its own thread and event loop."""
    port = _free_port()
    ready: dict[str, object] = {}
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        pool = await connect_pool(database_url, max_size=5)
        tenant = await make_tenant(pool, "fuzz")
        settings = Settings(database_url=database_url, public_url=f"http://127.0.0.1:{port}")
        async with pool.acquire() as conn:
            workflow_id = await conn.fetchval("SELECT gen_random_uuid()")
        app = create_app(settings, pool)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        from aiohttp import ClientSession

        async with ClientSession() as http:
            resp = await http.post(
                f"http://127.0.0.1:{port}/v1/workflows",
                json={"name": "fuzz", "definition": SIMPLE_DEFINITION, "status": "active"},
                headers={"Authorization": f"Bearer {tenant.key}"},
            )
            ready["workflow_key"] = (await resp.json())["workflow_key"]
        del workflow_id
        ready["key"] = tenant.key
        started.set()
        await stop.wait()
        await runner.cleanup()
        await pool.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30), "the API did not start"
    yield LiveApi(f"http://127.0.0.1:{port}", str(ready["key"]), str(ready["workflow_key"]))
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


@pytest.fixture(scope="module")
def api_schema(live_api: LiveApi) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(build_openapi(live_api.base_url))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms(case: schemathesis.Case, live_api: LiveApi) -> None:
    if case.operation.path == "/v1/live":
        return  # an endless event stream: tested on its own in test_live.py
    if isinstance(case.body, dict):
        # Point some bodies at the real workflow and key, so that the fuzzer
        # reaches past authentication and look-up into validation and storage.
        # Only strings are replaced, so a negative case (a wrong type) stays negative.
        if isinstance(case.body.get("api_key"), str):
            case.body["api_key"] = live_api.key
        if isinstance(case.body.get("workflow_key"), str):
            case.body["workflow_key"] = live_api.workflow_key
    # The real key replaces a generated one; a case that leaves the required
    # header out on purpose (a negative case) is sent without it, else adding
    # it here would make that case valid and its 200 a false failure.
    generated = case.headers or {}
    auth = {"Authorization": f"Bearer {live_api.key}"} if "Authorization" in generated else {}
    case.call_and_validate(
        base_url=live_api.base_url,
        headers=auth,
        # A schema-valid number can still be refused (an E.164 number that no
        # country uses, say): such a 422 is documented, so this heuristic is off.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
