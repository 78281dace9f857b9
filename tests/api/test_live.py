"""The live view: the tenant's outbox events as Server-Sent Events, resumable."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from api.app import create_app
from dialer.outbox import write_event
from dialer.settings import Settings
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


async def test_an_event_committed_after_a_later_one_still_reaches_the_viewer(
    client: TestClient, tenant: Tenant, pool
) -> None:
    resp = await client.get("/v1/live", headers=tenant.auth)
    async with pool.acquire() as slow, pool.acquire() as fast:
        # The slow transaction draws the lower id and commits last; then one that
        # rolls back leaves a hole for good, which must not hold the stream for long.
        async with slow.transaction():
            await write_event(
                slow,
                tenant_id=tenant.id,
                event_type="workflow.status_changed",
                payload={"status": "slow"},
            )
            await write_event(
                fast,
                tenant_id=tenant.id,
                event_type="workflow.status_changed",
                payload={"status": "fast"},
            )
            await asyncio.sleep(1.2)  # the viewer polls meanwhile and sees only 'fast'
        rolled_back = fast.transaction()
        await rolled_back.start()
        await write_event(
            fast,
            tenant_id=tenant.id,
            event_type="workflow.status_changed",
            payload={"status": "gone"},
        )
        await rolled_back.rollback()
        await write_event(
            fast,
            tenant_id=tenant.id,
            event_type="workflow.status_changed",
            payload={"status": "after"},
        )
    seen = [await _next_event(resp) for _ in range(3)]
    statuses = [orjson.loads(e["data"])["data"]["status"] for e in seen]
    assert statuses == ["slow", "fast", "after"]
    assert [int(e["id"]) for e in seen] == sorted(int(e["id"]) for e in seen)
    resp.close()


async def test_an_event_number_past_the_bigint_range_is_refused(
    client: TestClient, tenant: Tenant
) -> None:
    resp = await client.get("/v1/live?after=99999999999999999999", headers=tenant.auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "after"


async def test_call_progress_reaches_the_viewer_of_its_tenant_only(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, pool
) -> None:
    from dialer.ids import new_id
    from dialer.messages import CallEvent
    from dialer.progress import notify_progress
    from scheduler.consumer import EventConsumer
    from tests.api.helpers import make_workflow, ref_record

    wf = await make_workflow(client, tenant.auth)
    made = await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record()},
        headers=tenant.auth,
    )
    record_id = (await made.json())["record_id"]
    call_id = new_id()
    await pool.execute(
        """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164, state)
           VALUES ($1, $2, $3::uuid, $4::uuid, '+12125550123', 'dialing')""",
        call_id,
        tenant.id,
        record_id,
        wf["id"],
    )

    def _event(call_id, record_id, tenant, wf, kind: str, at: float) -> CallEvent:
        return CallEvent(str(call_id), record_id, str(tenant.id), wf["id"], kind, at, "w1")

    mine = await client.get("/v1/live", headers=tenant.auth)
    theirs = await client.get("/v1/live", headers=other_tenant.auth)
    await asyncio.sleep(0.3)  # both viewers are listening
    consumer = EventConsumer(pool, broker=None)  # type: ignore[arg-type]
    # The worker's claim set the call to dialing already; its viewers still hear of it.
    await consumer.handle(_event(call_id, record_id, tenant, wf, "dialing", 1_799_999_999.0))
    assert (await _next_event(mine))["event"] == "call.dialing"
    await consumer.handle(_event(call_id, record_id, tenant, wf, "ringing", 1_800_000_000.0))
    event = await _next_event(mine)
    assert event["event"] == "call.ringing" and "id" not in event  # not replayable
    assert f'"call_id":"{call_id}"' in event["data"] and '"phone":"+12125550123"' in event["data"]
    # A progress event out of order (dialing after ringing) changes nothing and says nothing.
    await consumer.handle(_event(call_id, record_id, tenant, wf, "dialing", 1_800_000_001.0))
    async with pool.acquire() as conn:  # a notification of another tenant's call
        await notify_progress(conn, other_tenant.id, "call.answered", {"call_id": "x"})
    await consumer.handle(_event(call_id, record_id, tenant, wf, "answered", 1_800_000_002.0))
    assert (await _next_event(mine))["event"] == "call.answered"
    assert (await _next_event(theirs))["data"] == '{"type":"call.answered","data":{"call_id":"x"}}'
    mine.close()
    theirs.close()


async def test_a_bad_cursor_is_named_by_where_it_came_from(
    client: TestClient, tenant: Tenant
) -> None:
    for headers, query, field in (
        ({"Last-Event-ID": "-5"}, "", "Last-Event-ID"),
        ({}, "?after=x", "after"),
    ):
        resp = await client.get(f"/v1/live{query}", headers={**tenant.auth, **headers})
        assert resp.status == 422
        assert (await resp.json())["error"]["field"] == field


async def test_a_server_shutting_down_ends_open_streams_at_once(
    settings: Settings, pool, tenant: Tenant
) -> None:
    # Once, an open stream held `dialer up`'s stop for the handlers' timeout (60 s
    # and more), and the workers' drain behind it.
    runner = web.AppRunner(create_app(settings, pool), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.get(f"http://127.0.0.1:{port}/v1/live", headers=tenant.auth)
            assert resp.status == 200
            assert await resp.content.readline() == b": live\n"
            started = time.monotonic()
            await asyncio.wait_for(runner.cleanup(), 10)
            assert time.monotonic() - started < 3
            await asyncio.wait_for(resp.content.read(), 3)  # the stream has ended
            resp.close()
    finally:
        await runner.cleanup()
