"""What a record's graph does after a wait, through the scheduler and the event consumer.

A branch after a wait decides on the last call and the bot's result as it would
have right after the call; a graph that leads back to its call node stops at the
workflow's cap on all attempts.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dialer.bus import Broker
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import make_tenant
from tests.scheduler.test_engine import NOON, Clock, FakeWorker, _records, _settle
from tests.workflow_setup import insert_workflow

CALL = {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "Hi"}}
SETTINGS: dict[str, Any] = {
    "default_timezone": "America/New_York",
    "pacing": {"mode": "progressive", "seats": 3},
}


async def _run(
    pool: asyncpg.Pool,
    broker: Broker,
    definition: dict[str, Any],
    settings: dict[str, Any],
    worker_answer: tuple[str, dict],
    ticks: int,
) -> tuple[asyncpg.Record, FakeWorker]:
    tenant = await make_tenant(pool, "after-wait")
    workflow = await insert_workflow(pool, tenant.id, definition, settings, "after wait")
    (record_id,) = await _records(pool, tenant, workflow, ["2125550150"])
    clock = Clock(NOON)
    disposition, values = worker_answer
    worker = FakeWorker(
        broker,
        {"+12125550150": [disposition]},
        clock,
        {"bot_result": {"outcome": "completed", "values": values, "tags": []}},
    )
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    sub = await broker.consume_jobs(worker, prefetch=10)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
    try:
        for _ in range(ticks):
            await scheduler.tick()
            await _settle(
                pool,
                "SELECT count(*) = 0 FROM calls WHERE record_id = $1 AND state <> 'ended'",
                record_id,
            )
            clock.now += 700  # past the 600 s wait
        await _settle(pool, "SELECT status <> 'in_progress' FROM records WHERE id = $1", record_id)
    finally:
        await sub.cancel()
        await consumer.close()
    record = await pool.fetchrow("SELECT * FROM records WHERE id = $1", record_id)
    return record, worker


async def test_a_branch_after_a_wait_sees_the_bot_s_result(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    definition = {
        "start": "call",
        "nodes": [
            CALL,
            {"id": "later", "type": "wait", "duration_s": 600},
            {
                "id": "said_yes",
                "type": "branch",
                "condition": {
                    "join": "and",
                    "conditions": [
                        {"field": "result.answer", "operator": "equals", "value": "yes"},
                        {"field": "call.outcome", "operator": "equals", "value": "answered"},
                    ],
                },
            },
            {"id": "yes", "type": "end"},
            {"id": "no", "type": "end", "status": "failed"},
        ],
        "edges": [
            {"from": "call", "on": "answered", "to": "later"},
            {"from": "later", "on": "next", "to": "said_yes"},
            {"from": "said_yes", "on": "true", "to": "yes"},
            {"from": "said_yes", "on": "false", "to": "no"},
        ],
    }
    record, worker = await _run(
        pool, broker, definition, SETTINGS, ("answered", {"answer": "yes"}), ticks=2
    )
    assert (record["status"], record["current_node"]) == ("completed", "yes")
    assert len(worker.jobs) == 1


async def test_a_graph_back_to_its_call_stops_at_the_cap_on_all_attempts(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    definition = {
        "start": "call",
        "nodes": [CALL, {"id": "later", "type": "wait", "duration_s": 600}],
        "edges": [
            {"from": "call", "on": "busy", "to": "later"},
            {"from": "later", "on": "next", "to": "call"},
        ],
    }
    record, worker = await _run(
        pool, broker, definition, {**SETTINGS, "max_attempts": 3}, ("busy", {}), ticks=6
    )
    assert (record["status"], record["outcome"], record["attempts"]) == (
        "completed",
        "max_attempts",
        3,
    )
    assert len(worker.jobs) == 3


async def test_a_job_no_encoder_takes_ends_its_call_and_holds_back_nobody(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    # Data stored before ingestion refused such nesting: the dial job's encoder
    # cannot take it. Once it failed every tick for the whole batch, forever.
    tenant = await make_tenant(pool, "unencodable")
    definition = {
        "start": "call",
        "nodes": [CALL, {"id": "done", "type": "end"}],
        "edges": [{"from": "call", "to": "done"}],
    }
    workflow = await insert_workflow(pool, tenant.id, definition, SETTINGS, "deep")
    deep, fine = await _records(pool, tenant, workflow, ["2125550160", "2125550161"])
    await pool.execute(
        """UPDATE records SET meta = ('{"a":' || repeat('[', 600) || '1' || repeat(']', 600)
               || '}')::jsonb WHERE id = $1""",
        deep,
    )
    clock = Clock(NOON)
    worker = FakeWorker(broker, {}, clock)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    sub = await broker.consume_jobs(worker, prefetch=10)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id], republish_after_s=0)
    try:
        first = await scheduler.tick()
        assert first.published == 1 and first.failed_workflows == 0
        await _settle(pool, "SELECT status = 'completed' FROM records WHERE id = $1", fine)
        second = await scheduler.tick()
        assert second.republished == 0
        await _settle(pool, "SELECT status <> 'in_progress' FROM records WHERE id = $1", deep)
    finally:
        await sub.cancel()
        await consumer.close()
    call = await pool.fetchrow(
        "SELECT state, disposition, end_reason FROM calls WHERE record_id = $1", deep
    )
    assert tuple(call) == ("ended", "failed", "unencodable_job")
    # (republish_after_s=0 sends the fine job twice; a real worker's claim dials it once)
    assert {job.record_id for job in worker.jobs} == {str(fine)}
