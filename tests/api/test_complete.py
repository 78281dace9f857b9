"""Completing a record through the API while the scheduler has work out for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dialer.bus import MemoryBroker
from scheduler.engine import Scheduler
from tests.api.helpers import SIMPLE_DEFINITION, make_workflow
from tests.conftest import Tenant

# UK numbers: no legal calling hours apply to them, so the tests run at any hour.
PHONES = ["+442071838750", "+442071838751", "+442071838752"]


@pytest.fixture
async def scheduler(pool: asyncpg.Pool, tenant: Tenant) -> AsyncIterator[Scheduler]:
    broker = MemoryBroker("complete")
    await broker.start()
    try:
        # republish_after_s=0: a queued call left behind is republished on every tick.
        yield Scheduler(pool, broker, tenant_ids=[tenant.id], republish_after_s=0)
    finally:
        await broker.close()


async def _workflow_with_records(client: TestClient, tenant: Tenant) -> dict[str, Any]:
    resp = await client.post(
        "/v1/workflows",
        json={
            "name": "two seats",
            "definition": SIMPLE_DEFINITION,
            "settings": {"pacing": {"mode": "progressive", "seats": 2}},
            "status": "active",
        },
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    wf = await resp.json()
    records = [{"record_phone_number": p, "record_first_name": "Ada"} for p in PHONES]
    resp = await client.post(
        "/v1/records/bulk",
        json={"workflow_key": wf["workflow_key"], "records": records},
        headers=tenant.auth,
    )
    assert (await resp.json())["accepted"] == len(PHONES)
    return wf


async def _complete(client: TestClient, tenant: Tenant, wf: dict[str, Any], phone: str) -> None:
    resp = await client.post(
        "/v1/records/complete",
        json={"workflow_key": wf["workflow_key"], "record_phone_number": phone},
        headers=tenant.auth,
    )
    assert resp.status == 200, await resp.text()


async def test_completing_a_record_ends_its_queued_call(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool, scheduler: Scheduler
) -> None:
    wf = await _workflow_with_records(client, tenant)
    assert (await scheduler.tick()).published == 2  # two seats
    called = await pool.fetch(
        """SELECT c.id, c.node_run_id, c.phone_e164 FROM calls c
           WHERE c.workflow_id = $1::uuid AND c.state = 'queued'""",
        wf["id"],
    )
    assert len(called) == 2
    # The CRM completes both before any worker has claimed their calls.
    for row in called:
        await _complete(client, tenant, wf, row["phone_e164"])

    calls = await pool.fetch(
        """SELECT c.state, c.disposition, c.end_reason, c.ended_at IS NOT NULL AS ended,
                  n.status AS run_status
           FROM calls c JOIN node_runs n ON n.id = c.node_run_id
           WHERE c.workflow_id = $1::uuid""",
        wf["id"],
    )
    assert [tuple(r) for r in calls] == [
        ("ended", "cancelled", "record_completed", True, "cancelled")
    ] * 2

    # Their seats go to the third record; only its call is queued, so only its
    # job is republished (the tick republishes after it publishes).
    tick = await scheduler.tick()
    assert (tick.published, tick.republished) == (1, 1)
    third = next(p for p in PHONES if p not in {r["phone_e164"] for r in called})
    queued = await pool.fetch(
        "SELECT phone_e164 FROM calls WHERE workflow_id = $1::uuid AND state = 'queued'",
        wf["id"],
    )
    assert [r["phone_e164"] for r in queued] == [third]


async def test_a_call_a_worker_has_claimed_is_left_to_finish(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool, scheduler: Scheduler
) -> None:
    wf = await _workflow_with_records(client, tenant)
    await scheduler.tick()
    claimed = await pool.fetchrow(
        """UPDATE calls SET state = 'dialing', worker_id = 'w1', dialing_at = now()
           WHERE id = (SELECT id FROM calls WHERE workflow_id = $1::uuid ORDER BY id LIMIT 1)
           RETURNING id, phone_e164""",
        wf["id"],
    )
    await _complete(client, tenant, wf, claimed["phone_e164"])
    row = await pool.fetchrow(
        "SELECT state, disposition, end_reason FROM calls WHERE id = $1", claimed["id"]
    )
    assert tuple(row) == ("dialing", None, None)


async def test_completing_the_last_open_record_completes_its_list(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/lists",
        json={
            "name": "L",
            "records": [{"record_phone_number": PHONES[0], "record_first_name": "A"}],
        },
        headers=tenant.auth,
    )
    list_id = (await resp.json())["list"]["id"]
    await _complete(client, tenant, wf, PHONES[0])
    got = await (await client.get(f"/v1/lists/{list_id}", headers=tenant.auth)).json()
    assert got["status"] == "completed"
    assert got["completed_at"] is not None
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE tenant_id = $1 AND event_type = 'list.completed'",
            tenant.id,
        )
        == 1
    )


async def test_deleting_the_last_open_record_completes_its_list(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    records = [{"record_phone_number": p, "record_first_name": "A"} for p in PHONES[:2]]
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/lists",
        json={"name": "L", "records": records},
        headers=tenant.auth,
    )
    body = await resp.json()
    await _complete(client, tenant, wf, PHONES[0])
    resp = await client.delete(f"/v1/records/{body['records'][1]['id']}", headers=tenant.auth)
    assert resp.status == 204
    got = await (await client.get(f"/v1/lists/{body['list']['id']}", headers=tenant.auth)).json()
    assert got["status"] == "completed"


async def test_stopping_a_workflow_completes_lists_left_with_no_open_record(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    lists = []
    for name, phones in (("idle", PHONES[:2]), ("busy", PHONES[2:])):
        records = [{"record_phone_number": p, "record_first_name": "A"} for p in phones]
        resp = await client.post(
            f"/v1/workflows/{wf['id']}/lists",
            json={"name": name, "records": records},
            headers=tenant.auth,
        )
        lists.append((await resp.json())["list"]["id"])
    # A call in progress keeps the second list open: its record finishes later.
    await pool.execute(
        "UPDATE records SET status = 'in_progress' WHERE list_id = $1::uuid", lists[1]
    )
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/status", json={"status": "stopped"}, headers=tenant.auth
    )
    assert resp.status == 200
    idle, busy = [
        await (await client.get(f"/v1/lists/{i}", headers=tenant.auth)).json() for i in lists
    ]
    assert (idle["status"], busy["status"]) == ("completed", "active")
    events = await pool.fetch(
        """SELECT payload->'data'->>'list_id' AS list_id FROM outbox
           WHERE tenant_id = $1 AND event_type = 'list.completed'""",
        tenant.id,
    )
    assert [e["list_id"] for e in events] == [lists[0]]
