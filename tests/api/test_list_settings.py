"""A list's start_at is stored in a form PostgreSQL casts, as the scheduler does on each tick."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dialer.bus import MemoryBroker
from scheduler.engine import Scheduler
from tests.api.helpers import make_workflow
from tests.conftest import Tenant

UK = {"record_phone_number": "+442071838750", "record_first_name": "Ada"}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-01-05T09Z", "2026-01-05T09:00:00+00:00"),
        ("2026-W01-1T09:00:00+00:00", "2025-12-29T09:00:00+00:00"),
        ("2026-01-05T09:00:00,5Z", "2026-01-05T09:00:00.500000+00:00"),
        ("20260105T0900+0530", "2026-01-05T09:00:00+05:30"),
        ("2026-01-05 09:00:00-05:00", "2026-01-05T09:00:00-05:00"),
    ],
)
async def test_start_at_is_stored_as_postgresql_reads_it(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool, given: str, stored: str
) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/lists",
        json={"name": "L", "settings": {"start_at": given}, "records": [UK]},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    list_id = (await resp.json())["list"]["id"]
    assert (await resp.json())["list"]["settings"] == {"start_at": stored}
    # The scheduler's own cast of the stored text.
    assert await pool.fetchval(
        "SELECT (settings->>'start_at')::timestamptz = $2::text::timestamptz FROM lists "
        "WHERE id = $1::uuid",
        list_id,
        stored,
    )


async def test_an_odd_start_at_does_not_stop_the_scheduler(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/lists",
        json={"name": "L", "settings": {"start_at": "2000-01-03T09Z"}, "records": [UK]},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    broker = MemoryBroker("start-at")
    await broker.start()
    try:
        await Scheduler(pool, broker, tenant_ids=[tenant.id]).tick()
    finally:
        await broker.close()
    status = await pool.fetchval(
        "SELECT status FROM records WHERE workflow_id = $1::uuid", wf["id"]
    )
    assert status == "in_progress"  # its list had started: the record was called


async def test_patch_normalises_start_at_too(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    created = await client.post(
        f"/v1/workflows/{wf['id']}/lists", json={"name": "L", "records": [UK]}, headers=tenant.auth
    )
    list_id = (await created.json())["list"]["id"]
    resp = await client.patch(
        f"/v1/lists/{list_id}",
        json={"settings": {"priority": 5, "start_at": "2026-01-05T09Z"}},
        headers=tenant.auth,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["settings"] == {
        "priority": 5,
        "start_at": "2026-01-05T09:00:00+00:00",
    }


@pytest.mark.parametrize(
    "start_at",
    [
        "2026-01-05T09:00:00",  # no offset
        "2026-01-05T09:00:00+05:30:15.5",  # an offset PostgreSQL cannot read
        "2026-01-01T00:00:00+25:00",
        "tomorrow",
        20260105,
    ],
)
async def test_start_at_postgresql_could_not_read_is_a_422(
    client: TestClient, tenant: Tenant, start_at: object
) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/lists",
        json={"name": "L", "settings": {"start_at": start_at}, "records": [UK]},
        headers=tenant.auth,
    )
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == "settings.start_at"
