"""A call's end is never lost to its workflow, nor taken further after a cancel or a stop.

Against real PostgreSQL: a batch holding an event whose workflow step cannot
be taken (branches that loop) still ends every call, and that record alone is
ended as failed; a call that ends after its list was cancelled or its
workflow stopped ends its record as cancelled instead of retrying it; a call
that ends while its workflow is paused is retried once the workflow resumes.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dialer.bus import MemoryBroker
from dialer.ids import new_id
from dialer.messages import CallEvent
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import Tenant, make_tenant
from tests.scheduler.test_engine import NOON, SETTINGS, Clock, _records, _workflow
from tests.workflow_setup import insert_workflow


@pytest.fixture
async def memory_broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(f"fail-{secrets.token_hex(4)}")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


def _ended(call: asyncpg.Record, disposition: str, at: float = NOON + 30) -> CallEvent:
    return CallEvent(
        call_id=str(call["id"]),
        record_id=str(call["record_id"]),
        tenant_id=str(call["tenant_id"]),
        workflow_id=str(call["workflow_id"]),
        kind="ended",
        at=at,
        worker_id="w-fail",
        data={"disposition": disposition, "sip_status": 486 if disposition == "busy" else 200},
    )


async def _events(pool: asyncpg.Pool, record_id: uuid.UUID) -> list[tuple[str, dict]]:
    rows = await pool.fetch(
        "SELECT event_type, payload FROM outbox WHERE record_id = $1 ORDER BY id", record_id
    )
    return [(r["event_type"], r["payload"]["data"]) for r in rows]


# After the call, a branch on meta.p: one record's value sends it round the branch forever.
LOOP_AFTER_CALL = {
    "start": "c",
    "nodes": [
        {"id": "c", "type": "call", "handler": {"type": "prompt", "text": "hi"}},
        {
            "id": "b",
            "type": "branch",
            "condition": {"field": "meta.p", "operator": "equals", "value": "2125551600"},
        },
        {"id": "d", "type": "end"},
    ],
    "edges": [
        {"from": "c", "on": "default", "to": "b"},
        {"from": "b", "on": "false", "to": "d"},
        {"from": "b", "on": "true", "to": "b"},
    ],
}


async def test_a_workflow_error_in_a_batch_loses_no_call(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "fail")
    settings = {**SETTINGS, "pacing": {"mode": "progressive", "seats": 10}}
    workflow = await insert_workflow(pool, tenant.id, LOOP_AFTER_CALL, settings, "loop")
    ids = await _records(pool, tenant, workflow, [f"212555160{i}" for i in range(4)])
    scheduler = Scheduler(pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id])
    assert (await scheduler.tick()).published == 4
    calls = await pool.fetch("SELECT * FROM calls WHERE workflow_id = $1", workflow["id"])
    consumer = EventConsumer(pool, memory_broker)

    # Raised WorkflowLoopError for the whole batch before: requeued, then dead-lettered.
    results = await consumer._handle_batch([_ended(c, "answered") for c in calls])

    assert results == [None] * 4
    rows = await pool.fetch(
        """SELECT r.id, r.status, r.outcome, c.state, c.disposition
           FROM records r JOIN calls c ON c.record_id = r.id WHERE r.workflow_id = $1""",
        workflow["id"],
    )
    assert {(r["state"], r["disposition"]) for r in rows} == {("ended", "answered")}
    outcomes = {r["id"]: (r["status"], r["outcome"]) for r in rows}
    assert outcomes[ids[0]] == ("failed", "workflow_error")
    assert {outcomes[i] for i in ids[1:]} == {("completed", "false")}
    events = await _events(pool, ids[0])
    assert [kind for kind, _ in events] == ["call.completed", "record.completed"]
    assert events[0][1]["disposition"] == "answered"
    assert (events[1][1]["status"], events[1][1]["outcome"]) == ("failed", "workflow_error")


async def test_an_event_the_database_refuses_still_fails_alone(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "fail")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125551701"])
    scheduler = Scheduler(pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id])
    assert (await scheduler.tick()).published == 1
    (call,) = await pool.fetch("SELECT * FROM calls WHERE record_id = $1", record_id)
    bad = _ended(call, "answered")
    bad.data["sip_status"] = "not a status"

    (result,) = await EventConsumer(pool, memory_broker)._handle_batch([bad])

    # The event itself is bad: nothing to store, and no record failed for it.
    assert isinstance(result, Exception)
    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", record_id) == (
        "in_progress"
    )


async def _dialling(
    pool: asyncpg.Pool, broker: MemoryBroker, tenant: Tenant, workflow: asyncpg.Record, phone: str
) -> tuple[Scheduler, Clock, uuid.UUID, asyncpg.Record, uuid.UUID]:
    """A record in a list of its own, its call dialling."""
    list_id = new_id()
    await pool.execute(
        "INSERT INTO lists (id, tenant_id, workflow_id, name) VALUES ($1, $2, $3, 'L')",
        list_id,
        tenant.id,
        workflow["id"],
    )
    (record_id,) = await _records(pool, tenant, workflow, [phone], list_id)
    clock = Clock(NOON)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
    assert (await scheduler.tick()).published == 1
    call = await pool.fetchrow(
        """UPDATE calls SET state = 'dialing' WHERE record_id = $1 RETURNING *""", record_id
    )
    return scheduler, clock, list_id, call, record_id


async def test_a_call_ending_after_its_list_was_cancelled_cancels_its_record(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "fail")
    workflow = await _workflow(pool, tenant)  # busy: retried after 600 s
    scheduler, clock, list_id, call, record_id = await _dialling(
        pool, memory_broker, tenant, workflow, "2125551801"
    )
    # As POST /v1/lists/{id}/cancel does: the queued records only.
    await pool.execute(
        "UPDATE lists SET status = 'cancelled', cancelled_at = now() WHERE id = $1", list_id
    )

    await EventConsumer(pool, memory_broker).handle(_ended(call, "busy"))
    clock.now += 700
    await scheduler.tick()

    record = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", record_id)
    assert (record["status"], record["outcome"]) == ("cancelled", "list_cancelled")
    assert await pool.fetchval("SELECT count(*) FROM calls WHERE record_id = $1", record_id) == 1
    events = await _events(pool, record_id)
    assert [kind for kind, _ in events] == ["call.completed", "record.completed"]
    assert events[1][1]["status"] == "cancelled"
    # A cancelled list stays cancelled, though it has no open record left.
    assert await pool.fetchval("SELECT status FROM lists WHERE id = $1", list_id) == "cancelled"


async def test_a_call_ending_after_its_workflow_stopped_cancels_its_record(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "fail")
    workflow = await _workflow(pool, tenant)
    _, _, list_id, call, record_id = await _dialling(
        pool, memory_broker, tenant, workflow, "2125551901"
    )
    await pool.execute("UPDATE workflows SET status = 'stopped' WHERE id = $1", workflow["id"])

    await EventConsumer(pool, memory_broker).handle(_ended(call, "busy"))

    record = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", record_id)
    assert (record["status"], record["outcome"]) == ("cancelled", "workflow_stopped")
    events = await _events(pool, record_id)
    assert [kind for kind, _ in events] == ["call.completed", "record.completed"]
    # Its list had no other open record: it completes, as when a record finishes.
    assert await pool.fetchval("SELECT status FROM lists WHERE id = $1", list_id) == "completed"


async def test_a_call_ending_while_its_workflow_is_paused_is_retried_on_resume(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "fail")
    workflow = await _workflow(pool, tenant)
    scheduler, clock, _, call, record_id = await _dialling(
        pool, memory_broker, tenant, workflow, "2125552001"
    )
    await pool.execute("UPDATE workflows SET status = 'paused' WHERE id = $1", workflow["id"])

    await EventConsumer(pool, memory_broker).handle(_ended(call, "busy"))
    clock.now += 700
    paused = await scheduler.tick()
    await pool.execute("UPDATE workflows SET status = 'active' WHERE id = $1", workflow["id"])
    resumed = await scheduler.tick()

    assert (paused.published, resumed.published) == (0, 1)
    assert await pool.fetchval("SELECT count(*) FROM calls WHERE record_id = $1", record_id) == 2
