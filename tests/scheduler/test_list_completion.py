"""A list completes when its last open record ends, and only if it is still active."""

from __future__ import annotations

import asyncpg

from dialer.ids import new_id
from scheduler.steps import RECORD_COLUMNS, complete_list_if_done
from tests.conftest import make_tenant
from tests.scheduler.test_engine import _records, _workflow


async def _list_of_one(pool: asyncpg.Pool, status: str) -> tuple[object, asyncpg.Record]:
    tenant = await make_tenant(pool, "lst")
    workflow = await _workflow(pool, tenant)
    list_id = new_id()
    await pool.execute(
        """INSERT INTO lists (id, tenant_id, workflow_id, name, status)
           VALUES ($1, $2, $3, 'L', $4)""",
        list_id,
        tenant.id,
        workflow["id"],
        status,
    )
    (record_id,) = await _records(pool, tenant, workflow, ["2125550981"], list_id)
    await pool.execute("UPDATE records SET status = 'completed' WHERE id = $1", record_id)
    record = await pool.fetchrow(
        f"SELECT {RECORD_COLUMNS} FROM records r WHERE r.id = $1", record_id
    )
    return list_id, record


async def test_the_last_record_ending_completes_an_active_list(pool: asyncpg.Pool) -> None:
    list_id, record = await _list_of_one(pool, "active")
    async with pool.acquire() as conn, conn.transaction():
        await complete_list_if_done(conn, record, {"name": "W"})
    assert await pool.fetchval("SELECT status FROM lists WHERE id = $1", list_id) == "completed"
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = 'list.completed' "
            "AND payload->'data'->>'list_id' = $1::text",
            str(list_id),
        )
        == 1
    )


async def test_a_cancelled_list_stays_cancelled(pool: asyncpg.Pool) -> None:
    list_id, record = await _list_of_one(pool, "cancelled")
    async with pool.acquire() as conn, conn.transaction():
        await complete_list_if_done(conn, record, {"name": "W"})
    assert await pool.fetchval("SELECT status FROM lists WHERE id = $1", list_id) == "cancelled"
    assert not await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'list.completed' "
        "AND payload->'data'->>'list_id' = $1::text",
        str(list_id),
    )
