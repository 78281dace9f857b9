"""The reference look-ups: calls by id, callee or case; recordings of a number; tasks, subtasks."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dialer.ids import new_id
from dialer.settings import Secret, Settings
from tests.api.helpers import make_workflow
from tests.conftest import Tenant


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, webhook_secret=Secret("k"))


async def seed(client: TestClient, pool: asyncpg.Pool, tenant: Tenant) -> dict[str, Any]:
    """Two records (one with a case id), three calls, node runs and one recording."""
    wf = await make_workflow(client, tenant.auth)
    workflow_id = uuid.UUID(wf["id"])
    ids: dict[str, Any] = {"workflow": wf}
    records = []
    for phone, case_id, status in (
        ("+12125550123", "CASE-1", "completed"),
        ("+13125550199", None, "queued"),
    ):
        record_id = new_id()
        records.append(record_id)
        await pool.execute(
            """INSERT INTO records (id, tenant_id, workflow_id, workflow_version, phone_e164,
                   case_id, status, meta)
               VALUES ($1, $2, $3, 1, $4, $5, $6, $7)""",
            record_id,
            tenant.id,
            workflow_id,
            phone,
            case_id,
            status,
            {"crm": phone},
        )
    ids["records"] = records
    calls = []
    for record_id, phone, disposition in (
        (records[0], "+12125550123", "busy"),
        (records[0], "+12125550123", "answered"),
        (records[1], "+13125550199", "no_answer"),
    ):
        run_id, call_id = new_id(), new_id()
        await pool.execute(
            """INSERT INTO node_runs (id, tenant_id, record_id, workflow_id, node_id, node_type,
                   status, outcome)
               VALUES ($1, $2, $3, $4, 'call', 'call', 'completed', $5)""",
            run_id,
            tenant.id,
            record_id,
            workflow_id,
            disposition,
        )
        await pool.execute(
            """INSERT INTO calls (id, tenant_id, record_id, workflow_id, node_run_id, phone_e164,
                   state, disposition, sip_status, talk_s, ended_at)
               VALUES ($1, $2, $3, $4, $5, $6, 'ended', $7, 200, 12.5, now())""",
            call_id,
            tenant.id,
            record_id,
            workflow_id,
            run_id,
            phone,
            disposition,
        )
        calls.append(call_id)
    ids["calls"] = calls
    recording_id = new_id()
    await pool.execute(
        """INSERT INTO recordings (id, tenant_id, call_id, path, bytes)
           VALUES ($1, $2, $3, 'x.wav', 44)""",
        recording_id,
        tenant.id,
        calls[1],
    )
    ids["recording"] = recording_id
    return ids


async def get(client: TestClient, tenant: Tenant, path: str) -> Any:
    resp = await client.get(path, headers=tenant.auth)
    assert resp.status == 200, (path, await resp.text())
    return await resp.json()


async def test_call_by_id_with_its_recording(
    client: TestClient, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    ids = await seed(client, pool, tenant)
    answered, busy = ids["calls"][1], ids["calls"][0]
    call = await get(client, tenant, f"/v1/calls/{answered}")
    assert (call["disposition"], call["case_id"], call["callee_number"]) == (
        "answered",
        "CASE-1",
        "2125550123",
    )
    assert call["meta"] == {"crm": "+12125550123"}
    assert [r["id"] for r in call["recordings"]] == [str(ids["recording"])]
    assert "/download?expires=" in call["recordings"][0]["download_url"]
    recording = await get(client, tenant, f"/v1/calls/{answered}/recording")
    assert recording["id"] == str(ids["recording"])
    none = await client.get(f"/v1/calls/{busy}/recording", headers=tenant.auth)
    assert none.status == 404
    assert (await client.get(f"/v1/calls/{new_id()}", headers=tenant.auth)).status == 404
    assert (await client.get("/v1/calls/nope", headers=tenant.auth)).status == 404


@pytest.mark.parametrize(
    ("query", "dispositions"),
    [
        ("", ["busy", "answered", "no_answer"]),
        ("?phone=2125550123", ["busy", "answered"]),
        ("?phone=%2B13125550199", ["no_answer"]),
        ("?case_id=CASE-1", ["busy", "answered"]),
        ("?case_id=NOPE", []),
        ("?disposition=answered", ["answered"]),
        ("?state=ended&phone=3125550199", ["no_answer"]),
    ],
)
async def test_calls_by_callee_or_case_within_a_workflow(
    client: TestClient, pool: asyncpg.Pool, tenant: Tenant, query: str, dispositions: list[str]
) -> None:
    ids = await seed(client, pool, tenant)
    for ref in (ids["workflow"]["id"], ids["workflow"]["workflow_key"]):
        page = await get(client, tenant, f"/v1/workflows/{ref}/calls{query}")
        # Ids are UUIDv7: ordered to the millisecond, so compare without order.
        assert sorted(c["disposition"] for c in page["items"]) == sorted(dispositions)


async def test_paging_follows_the_cursor(
    client: TestClient, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    ids = await seed(client, pool, tenant)
    base = f"/v1/workflows/{ids['workflow']['id']}/calls?limit=2"
    first = await get(client, tenant, base)
    second = await get(client, tenant, f"{base}&cursor={first['next_cursor']}")
    assert len(first["items"]) == 2 and len(second["items"]) == 1
    assert second["next_cursor"] is None
    pages = [c["id"] for c in first["items"] + second["items"]]
    assert pages == sorted(str(c) for c in ids["calls"])


async def test_every_recording_of_one_number(
    client: TestClient, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    ids = await seed(client, pool, tenant)
    mine = await get(client, tenant, "/v1/recordings?phone=2125550123")
    assert [r["id"] for r in mine["items"]] == [str(ids["recording"])]
    assert mine["items"][0]["phone"] == "+12125550123"
    assert (await get(client, tenant, "/v1/recordings?phone=3125550199"))["items"] == []
    by_call = await get(client, tenant, f"/v1/recordings?call_id={ids['calls'][1]}")
    assert len(by_call["items"]) == 1


@pytest.mark.parametrize(
    ("query", "count"),
    [("", 2), ("?status=completed", 1), ("?case_id=CASE-1", 1), ("?phone=3125550199", 1)],
)
async def test_tasks(
    client: TestClient, pool: asyncpg.Pool, tenant: Tenant, query: str, count: int
) -> None:
    ids = await seed(client, pool, tenant)
    page = await get(client, tenant, f"/v1/workflows/{ids['workflow']['id']}/tasks{query}")
    assert len(page["items"]) == count
    assert all(t["task_id"] == t["id"] for t in page["items"])


async def test_subtasks(client: TestClient, pool: asyncpg.Pool, tenant: Tenant) -> None:
    ids = await seed(client, pool, tenant)
    base = f"/v1/workflows/{ids['workflow']['id']}/subtasks"
    assert len((await get(client, tenant, base))["items"]) == 3
    page = await get(client, tenant, f"{base}?task_id={ids['records'][0]}")
    assert sorted(s["outcome"] for s in page["items"]) == ["answered", "busy"]
    assert {s["nodetask_name"] for s in page["items"]} == {"call"}
    assert len((await get(client, tenant, f"{base}?case_id=CASE-1&node_type=call"))["items"]) == 2
    assert (await get(client, tenant, f"{base}?status=running"))["items"] == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/calls?phone=12", "phone"),
        ("/calls?colour=red", "colour"),
        ("/calls?state=gone", "state"),
        ("/tasks?status=done", "status"),
        ("/tasks?cursor=nope", "cursor"),
        ("/subtasks?task_id=nope", "task_id"),
        ("/subtasks?limit=0", "limit"),
    ],
)
async def test_bad_filters_are_named(
    client: TestClient, pool: asyncpg.Pool, tenant: Tenant, path: str, field: str
) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.get(f"/v1/workflows/{wf['id']}{path}", headers=tenant.auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == field


async def test_another_tenants_workflow_and_calls_are_invisible(
    client: TestClient, pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    ids = await seed(client, pool, other_tenant)
    wf = ids["workflow"]["id"]
    for path in (
        f"/v1/workflows/{wf}/calls",
        f"/v1/workflows/{wf}/tasks",
        f"/v1/workflows/{wf}/subtasks",
        f"/v1/calls/{ids['calls'][0]}",
        f"/v1/recordings/{ids['recording']}",
    ):
        assert (await client.get(path, headers=tenant.auth)).status == 404, path
    assert (await get(client, tenant, "/v1/recordings"))["items"] == []
