"""One workflow's (or one record's) failure stays its own; calls nobody waits for are let go.

Against real PostgreSQL, with the in-process broker: a workflow whose list
setting the database refuses must not stop the tick for the others, nor the
republishing and the lost-worker checks; a record whose branches loop is
ended as failed without holding back the other records; a cancelled list's
records are not dialled; a queued call whose record has moved on is ended,
not republished forever, and takes no seat meanwhile.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

import scheduler.engine as engine
from dialer.bus import MemoryBroker
from dialer.ids import new_id
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import Tenant, make_tenant
from tests.scheduler.test_engine import NOON, SETTINGS, Clock, _records, _settle, _workflow
from tests.workflow_setup import insert_workflow


@pytest.fixture
async def memory_broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(f"iso-{secrets.token_hex(4)}")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


async def _list(pool: asyncpg.Pool, tenant: Tenant, workflow: asyncpg.Record, **settings) -> object:
    list_id = new_id()
    await pool.execute(
        """INSERT INTO lists (id, tenant_id, workflow_id, name, settings)
           VALUES ($1, $2, $3, 'L', $4)""",
        list_id,
        tenant.id,
        workflow["id"],
        settings,
    )
    return list_id


async def test_a_workflow_the_database_refuses_fails_alone_and_is_logged_once(
    pool: asyncpg.Pool, memory_broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await make_tenant(pool, "iso")
    good = await _workflow(pool, tenant)
    first, second = await _records(pool, tenant, good, ["2125551101", "2125551102"])
    clock = Clock(NOON)
    scheduler = Scheduler(pool, memory_broker, clock=clock, tenant_ids=[tenant.id])
    assert (await scheduler.tick()).published == 2
    clock.now = NOON + 31  # past the grace a scheduler gives workers when it starts
    # One call's job was never confirmed published; the other's worker died.
    await pool.execute(
        "UPDATE calls SET published_at = now() - interval '1 hour' WHERE record_id = $1", first
    )
    dead = f"w-dead-{secrets.token_hex(3)}"
    await pool.execute(
        "INSERT INTO workers (id, last_seen_at) VALUES ($1, now() - interval '1 minute')", dead
    )
    await pool.execute(
        "UPDATE calls SET state = 'dialing', worker_id = $2 WHERE record_id = $1", second, dead
    )
    (third,) = await _records(pool, tenant, good, ["2125551103"])
    # A list stored with a start_at the API once let through and PostgreSQL cannot read.
    broken = await _workflow(pool, tenant)
    list_id = await _list(pool, tenant, broken, start_at="2026-01-05T09Z")
    await _records(pool, tenant, broken, ["2125551104"], list_id)

    try:
        with caplog.at_level(logging.ERROR, logger="scheduler.engine"):
            result = await scheduler.tick()  # raised InvalidDatetimeFormatError before
            for _ in range(3):
                assert (await scheduler.tick()).failed_workflows == 1
    finally:
        # Schedulers of every tenant share the test database (the demo's).
        await pool.execute("UPDATE workflows SET status = 'stopped' WHERE id = $1", broken["id"])

    assert result.failed_workflows == 1
    assert (result.published, result.republished, result.lost) == (1, 1, 1)
    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", third) == "in_progress"
    logged = [r for r in caplog.records if str(broken["id"]) in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]  # not once a tick


LOOPING = {
    "start": "b",
    "nodes": [
        {
            "id": "b",
            "type": "branch",
            "condition": {"field": "meta.p", "operator": "equals", "value": "2125551202"},
        },
        {"id": "c", "type": "call", "handler": {"type": "prompt", "text": "hi"}},
    ],
    "edges": [{"from": "b", "on": "true", "to": "c"}, {"from": "b", "on": "false", "to": "b"}],
}


async def test_a_record_whose_branches_loop_fails_alone(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "iso")
    workflow = await insert_workflow(pool, tenant.id, LOOPING, SETTINGS, "loop")
    looping, fine = await _records(pool, tenant, workflow, ["2125551201", "2125551202"])
    # The looping record comes first, in every tick's batch.
    await pool.execute("UPDATE records SET next_attempt_at = to_timestamp(1) WHERE id = $1", fine)
    scheduler = Scheduler(pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id])

    result = await scheduler.tick()

    assert (result.published, result.finished) == (1, 1)
    assert result.failed_workflows == 0
    rows = {
        r["id"]: (r["status"], r["outcome"])
        for r in await pool.fetch(
            "SELECT id, status, outcome FROM records WHERE workflow_id = $1", workflow["id"]
        )
    }
    assert rows == {looping: ("failed", "workflow_error"), fine: ("in_progress", None)}
    event = await pool.fetchval(
        """SELECT payload FROM outbox WHERE record_id = $1 AND event_type = 'record.completed'""",
        looping,
    )
    assert (event["data"]["status"], event["data"]["outcome"]) == ("failed", "workflow_error")


SMS_LOOP = {
    "start": "b",
    "nodes": [
        {
            "id": "b",
            "type": "branch",
            "condition": {"field": "meta.p", "operator": "equals", "value": "2125551302"},
        },
        {"id": "c", "type": "call", "handler": {"type": "prompt", "text": "hi"}},
        # Empty once rendered: it fails at once, and its failure edge leads back to it.
        {"id": "s", "type": "sms", "text": "{{placeholders.none}}"},
    ],
    "edges": [
        {"from": "b", "on": "true", "to": "c"},
        {"from": "b", "on": "false", "to": "s"},
        {"from": "s", "on": "failed", "to": "s"},
    ],
}


async def test_a_step_that_fails_after_writing_is_undone_alone(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "iso")
    workflow = await insert_workflow(pool, tenant.id, SMS_LOOP, SETTINGS, "sms loop")
    looping, fine = await _records(pool, tenant, workflow, ["2125551301", "2125551302"])
    await pool.execute("UPDATE records SET next_attempt_at = to_timestamp(1) WHERE id = $1", fine)
    scheduler = Scheduler(pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id])

    assert (await scheduler.tick()).published == 1  # "more than 20 chained steps" before

    status = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", looping)
    assert (status["status"], status["outcome"]) == ("failed", "workflow_error")
    # The node runs the failed step had queued went with it.
    assert await pool.fetchval("SELECT count(*) FROM node_runs WHERE record_id = $1", looping) == 0
    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", fine) == "in_progress"


async def test_a_cancelled_lists_records_are_not_dialled(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "iso")
    workflow = await _workflow(pool, tenant)
    list_id = await _list(pool, tenant, workflow)
    # Queued again by a call that ended as the list was being cancelled.
    (record_id,) = await _records(pool, tenant, workflow, ["2125551401"], list_id)
    await pool.execute("UPDATE lists SET status = 'cancelled' WHERE id = $1", list_id)
    scheduler = Scheduler(pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id])

    assert (await scheduler.tick()).published == 0

    assert await pool.fetchval("SELECT count(*) FROM calls WHERE record_id = $1", record_id) == 0
    # Nor is it left queued for good: it ends as the cancel ended the others.
    record = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", record_id)
    assert (record["status"], record["outcome"]) == ("cancelled", "list_cancelled")
    # And reported as the cancel reported the others.
    event = await pool.fetchval(
        "SELECT payload FROM outbox WHERE record_id = $1 AND event_type = 'record.completed'",
        record_id,
    )
    assert (event["data"]["status"], event["data"]["outcome"]) == ("cancelled", "list_cancelled")
    assert event["data"]["workflow_key"] == workflow["workflow_key"]
    await scheduler.tick()  # nothing left to end, nothing reported twice
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE record_id = $1", record_id) == 1


async def _three_queued_one_waiting(
    pool: asyncpg.Pool, memory_broker: MemoryBroker, republish_after_s: float
) -> tuple[Scheduler, list, list]:
    """Three seats, four records: three calls queued, then two of their records
    completed and cancelled through the API before any worker claimed them."""
    tenant = await make_tenant(pool, "iso")
    workflow = await _workflow(pool, tenant)  # progressive, three seats
    ids = await _records(pool, tenant, workflow, [f"212555150{i}" for i in range(4)])
    scheduler = Scheduler(
        pool,
        memory_broker,
        clock=Clock(NOON),
        tenant_ids=[tenant.id],
        republish_after_s=republish_after_s,
    )
    assert (await scheduler.tick()).published == 3
    await pool.execute("UPDATE records SET status = 'completed' WHERE id = $1", ids[0])
    await pool.execute("UPDATE records SET status = 'cancelled' WHERE id = $1", ids[1])
    calls = [
        await pool.fetchval("SELECT id FROM calls WHERE record_id = $1", record_id)
        for record_id in ids
    ]
    return scheduler, ids, calls


async def test_a_queued_call_whose_record_moved_on_takes_no_seat(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    scheduler, ids, _ = await _three_queued_one_waiting(pool, memory_broker, 3600)

    assert (await scheduler.tick()).published == 1  # the seats looked taken before

    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", ids[3]) == "in_progress"


async def test_a_queued_call_whose_record_moved_on_is_ended_not_republished(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    scheduler, _, calls = await _three_queued_one_waiting(pool, memory_broker, 0)

    result = await scheduler.tick()
    again = await scheduler.tick()

    # The call still waited for and the fourth record's, placed on the seats
    # the two freed; before, the three were republished every tick, and no seat freed.
    assert (result.published, result.republished) == (1, 2)
    assert again.republished == 2
    ended = await pool.fetch(
        """SELECT c.state, c.disposition, n.status AS run FROM calls c
           JOIN node_runs n ON n.id = c.node_run_id WHERE c.id = ANY($1::uuid[]) ORDER BY c.id""",
        calls[:2],
    )
    assert [tuple(r) for r in ended] == [("ended", "cancelled", "cancelled")] * 2
    assert await pool.fetchval("SELECT state FROM calls WHERE id = $1", calls[2]) == "queued"


async def test_a_workflow_another_scheduler_is_scheduling_is_left_to_it(
    pool: asyncpg.Pool,
) -> None:
    """Two schedulers never plan one workflow from the same snapshot (each would
    spend the same free seats): while one holds the workflow, the other skips it."""
    tenant = await make_tenant(pool, "iso")
    workflow = await _workflow(pool, tenant)
    await _records(pool, tenant, workflow, ["2125550961", "2125550962"])
    clock = Clock(NOON)
    scheduler = Scheduler(pool, MemoryBroker("turns"), clock=clock, tenant_ids=[tenant.id])
    async with pool.acquire() as other:
        await other.execute(
            "SELECT pg_advisory_lock(24232, hashtext($1::uuid::text))", workflow["id"]
        )
        try:
            assert (await scheduler.tick()).published == 0
        finally:
            await other.execute(
                "SELECT pg_advisory_unlock(24232, hashtext($1::uuid::text))", workflow["id"]
            )
    assert (await scheduler.tick()).published == 2


async def test_queued_calls_of_paused_workflows_wait_and_of_stopped_ones_end(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "iso")
    paused = await _workflow(pool, tenant)
    stopped = await _workflow(pool, tenant)
    (waiting,) = await _records(pool, tenant, paused, ["2125550971"])
    (ending,) = await _records(pool, tenant, stopped, ["2125550972"])
    scheduler = Scheduler(
        pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id], republish_after_s=0
    )
    assert (await scheduler.tick()).published == 2
    await pool.execute("UPDATE workflows SET status = 'paused' WHERE id = $1", paused["id"])
    await pool.execute("UPDATE workflows SET status = 'stopped' WHERE id = $1", stopped["id"])
    consumer = EventConsumer(pool, memory_broker)
    await consumer.start()
    try:
        assert (await scheduler.tick()).republished == 0  # nothing to dial while paused
        await _settle(pool, "SELECT status = 'cancelled' FROM records WHERE id = $1", ending)
    finally:
        await consumer.close()
    call = await pool.fetchrow("SELECT state, disposition FROM calls WHERE record_id = $1", ending)
    assert (call["state"], call["disposition"]) == ("ended", "cancelled")
    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", waiting) == (
        "in_progress"
    )
    assert await pool.fetchval("SELECT state FROM calls WHERE record_id = $1", waiting) == "queued"
    # Resumed, its call goes out again.
    await pool.execute("UPDATE workflows SET status = 'active' WHERE id = $1", paused["id"])
    assert (await scheduler.tick()).republished == 1


async def test_a_queued_call_no_call_node_explains_ends_with_its_record(
    pool: asyncpg.Pool, memory_broker: MemoryBroker
) -> None:
    tenant = await make_tenant(pool, "iso")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550991"])
    scheduler = Scheduler(
        pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id], republish_after_s=0
    )
    assert (await scheduler.tick()).published == 1
    await pool.execute(
        "UPDATE calls SET node_id = 'ghost', published_at = now() - interval '1 hour' "
        "WHERE record_id = $1",
        record_id,
    )
    consumer = EventConsumer(pool, memory_broker)
    await consumer.start()
    try:
        assert (await scheduler.tick()).republished == 0
        await _settle(
            pool,
            "SELECT status NOT IN ('queued', 'in_progress') FROM records WHERE id = $1",
            record_id,
        )
    finally:
        await consumer.close()
    call = await pool.fetchrow(
        "SELECT state, disposition FROM calls WHERE record_id = $1", record_id
    )
    assert (call["state"], call["disposition"]) == ("ended", "failed")
    record = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", record_id)
    assert (record["status"], record["outcome"]) == ("failed", "workflow_error")
    # Marked as sent, so that the next ticks do not send it again meanwhile.
    assert await pool.fetchval(
        "SELECT published_at > now() - interval '1 minute' FROM calls WHERE record_id = $1",
        record_id,
    )


async def test_a_bug_in_our_code_fails_no_record(
    pool: asyncpg.Pool, memory_broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad deploy raises in every step: the workflow is skipped (and logged) until
    the fix, and no record is ended for it."""
    tenant = await make_tenant(pool, "iso")
    workflow = await _workflow(pool, tenant)
    ids = await _records(pool, tenant, workflow, [f"21255507{i:02d}" for i in range(3)])

    async def buggy(*args: object, **kwargs: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'get'")

    monkeypatch.setattr(engine, "apply_step", buggy)
    scheduler = Scheduler(pool, memory_broker, clock=Clock(NOON), tenant_ids=[tenant.id])
    result = await scheduler.tick()
    assert result.failed_workflows == 1
    rows = await pool.fetch("SELECT status FROM records WHERE id = ANY($1::uuid[])", ids)
    assert [r["status"] for r in rows] == ["queued"] * 3
