"""The live view: the tenant's outbox events as Server-Sent Events, resumable."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from dialer.outbox import write_event
from tests.conftest import Tenant


async def _next_event(resp) -> dict[str, str]:
    fields: dict[str, str] = {}
    async with asyncio.timeout(5):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if not line:
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value


async def test_live_streams_own_events_and_resumes(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, pool
) -> None:
    resp = await client.get("/v1/live", headers=tenant.auth)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    async with pool.acquire() as conn:
        await write_event(
            conn,
            tenant_id=other_tenant.id,
            event_type="workflow.status_changed",
            payload={"status": "theirs"},
        )
        await write_event(
            conn,
            tenant_id=tenant.id,
            event_type="workflow.status_changed",
            payload={"status": "paused"},
        )
    event = await _next_event(resp)
    assert event["event"] == "workflow.status_changed"
    assert '"paused"' in event["data"] and "theirs" not in event["data"]
    resp.close()
    async with pool.acquire() as conn:
        await write_event(
            conn,
            tenant_id=tenant.id,
            event_type="workflow.status_changed",
            payload={"status": "active"},
        )
    again = await client.get("/v1/live", headers={**tenant.auth, "Last-Event-ID": event["id"]})
    resumed = await _next_event(again)
    assert '"active"' in resumed["data"] and int(resumed["id"]) > int(event["id"])
    again.close()
    bad = await client.get("/v1/live?after=x", headers=tenant.auth)
    assert bad.status == 422
