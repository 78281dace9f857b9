"""Records ended outside a workflow step still get their record.completed event.

A downstream system that follows records by their webhooks must learn of every
record's end: cancelled with its list or its workflow, or completed through the API.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.api.helpers import make_workflow
from tests.conftest import Tenant

# UK numbers: no legal calling hours apply to them, so the tests run at any hour.
PHONES = ["+442071838760", "+442071838761", "+442071838762"]


async def _list_of(
    client: TestClient, tenant: Tenant, wf: dict[str, Any], phones: list[str]
) -> dict[str, Any]:
    records = [
        {"record_phone_number": p, "record_first_name": "A", "meta": {"crm": p[-2:]}}
        for p in phones
    ]
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/lists",
        json={"name": "L", "records": records},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _ended(pool: asyncpg.Pool, tenant: Tenant) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT record_id, workflow_id, payload FROM outbox
           WHERE tenant_id = $1 AND event_type = 'record.completed' ORDER BY id""",
        tenant.id,
    )
    out = []
    for row in rows:
        data = row["payload"]["data"]
        assert data["record_id"] == str(row["record_id"])
        assert data["workflow_id"] == str(row["workflow_id"])
        out.append(data)
    return out


async def test_cancelling_a_list_reports_each_cancelled_record(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    body = await _list_of(client, tenant, wf, PHONES)
    ids = [r["id"] for r in body["records"]]
    # The first is being dialled: it finishes and reports through its workflow.
    await pool.execute("UPDATE records SET status = 'in_progress' WHERE id = $1::uuid", ids[0])
    resp = await client.post(f"/v1/lists/{body['list']['id']}/cancel", headers=tenant.auth)
    assert resp.status == 200
    ended = await _ended(pool, tenant)
    assert sorted(e["record_id"] for e in ended) == sorted(ids[1:])
    for e in ended:
        assert (e["status"], e["outcome"]) == ("cancelled", "list_cancelled")
        assert e["workflow_key"] == wf["workflow_key"]
        assert e["meta"] == {"crm": e["phone"][-2:]}
        assert e["attempts"] == 0
    # Cancelling again changes nothing and reports nothing more.
    await client.post(f"/v1/lists/{body['list']['id']}/cancel", headers=tenant.auth)
    assert len(await _ended(pool, tenant)) == 2


async def test_stopping_a_workflow_reports_each_cancelled_record(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    body = await _list_of(client, tenant, wf, PHONES[:2])
    resp = await client.post(
        "/v1/records",
        json={
            "workflow_key": wf["workflow_key"],
            "record_phone_number": PHONES[2],
            "record_first_name": "B",
        },
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/status", json={"status": "stopped"}, headers=tenant.auth
    )
    assert resp.status == 200
    ended = await _ended(pool, tenant)
    assert len(ended) == 3
    assert {e["phone"] for e in ended} == set(PHONES)
    assert {(e["status"], e["outcome"]) for e in ended} == {("cancelled", "workflow_stopped")}
    assert {r["id"] for r in body["records"]} < {e["record_id"] for e in ended}


async def test_completing_through_the_api_reports_the_record(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    body = await _list_of(client, tenant, wf, PHONES[:2])
    resp = await client.post(
        "/v1/records/complete",
        json={"workflow_key": wf["workflow_key"], "record_phone_number": PHONES[1]},
        headers=tenant.auth,
    )
    assert resp.status == 200, await resp.text()
    ended = await _ended(pool, tenant)
    assert [(e["record_id"], e["status"], e["outcome"]) for e in ended] == [
        (body["records"][1]["id"], "completed", "completed_by_api")
    ]
    assert ended[0]["workflow_key"] == wf["workflow_key"]
