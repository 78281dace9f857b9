"""The scheduler loop and event consumer against real PostgreSQL and both brokers.

The worker side is played by the test: it takes dial jobs off the queue and
publishes the call events a worker would, so that retries, windows, the DNC
list, worker loss and list completion are exercised end to end through the
database and the broker.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

import scheduler.engine as engine
from api.ingest import insert_records
from api.validation import validate_record
from dialer.bus import Broker, Delivery, MemoryBroker
from dialer.ids import new_id
from dialer.messages import CallEvent, DialJob
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import Tenant, make_tenant
from tests.workflow_setup import insert_workflow

# A Wednesday, 15:00 UTC = 10:00 in New York: inside a 09:00-20:00 window.
NOON = datetime(2026, 11, 25, 15, 0, tzinfo=ZoneInfo("UTC")).timestamp()

DEFINITION = {
    "start": "call",
    "nodes": [
        {
            "id": "call",
            "type": "call",
            "handler": {"type": "prompt", "text": "Hi {{record.first_name}}"},
        },
        {"id": "done", "type": "end"},
    ],
    "edges": [{"from": "call", "on": "default", "to": "done"}],
}
SETTINGS = {
    "default_timezone": "America/New_York",
    "calling_window": {
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "start": "09:00",
        "end": "20:00",
    },
    "retry": {"busy": {"delay_s": 600, "max_attempts": 3}},
    "pacing": {"mode": "progressive", "seats": 3},
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _workflow(
    pool: asyncpg.Pool, tenant: Tenant, settings: dict = SETTINGS
) -> asyncpg.Record:
    return await insert_workflow(pool, tenant.id, DEFINITION, settings, "engine test")


async def _records(pool, tenant, workflow, phones, list_id=None) -> list[uuid.UUID]:
    valid = [
        validate_record(
            {"record_phone_number": p, "record_first_name": f"P{p[-2:]}", "meta": {"p": p}},
            allow_e164=False,
            allow_case_id=False,
        )
        for p in phones
    ]
    async with pool.acquire() as conn:
        ids = await insert_records(conn, tenant.id, workflow, valid, list_id)
        # Ingested "now" in real time; make them due in the test's clock.
        await conn.execute(
            "UPDATE records SET next_attempt_at = to_timestamp(0) WHERE id = ANY($1::uuid[])", ids
        )
    return ids


class FakeWorker:
    """Takes dial jobs and answers each with the disposition the test scripts."""

    def __init__(
        self,
        broker: Broker,
        outcomes: dict[str, list[str]],
        clock: Clock,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.broker = broker
        self.outcomes = outcomes
        self.clock = clock
        self.extra = extra or {}  # more of every ended event's data (a bot_result, say)
        self.jobs: list[DialJob] = []

    async def __call__(self, delivery: Delivery) -> None:
        job = DialJob.from_bytes(delivery.body)
        self.jobs.append(job)
        script = self.outcomes.get(job.phone_e164, ["answered"])
        disposition = script[
            min(len([j for j in self.jobs if j.phone_e164 == job.phone_e164]) - 1, len(script) - 1)
        ]
        event = CallEvent(
            call_id=job.call_id,
            record_id=job.record_id,
            tenant_id=job.tenant_id,
            workflow_id=job.workflow_id,
            kind="ended",
            at=self.clock.now + 5,
            worker_id="fake",
            data={
                "disposition": disposition,
                "sip_status": 486 if disposition == "busy" else 200,
                **self.extra,
            },
        )
        await self.broker.publish_events([(event.routing_key, job.call_id, event.to_bytes())])
        await delivery.ack()


async def _settle(pool, predicate_sql: str, *args, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pool.fetchval(predicate_sql, *args):
        assert asyncio.get_running_loop().time() < deadline, predicate_sql
        await asyncio.sleep(0.05)


async def test_retries_until_max_then_completes(pool: asyncpg.Pool, broker: Broker) -> None:
    tenant = await make_tenant(pool, "eng")
    workflow = await _workflow(pool, tenant)
    (busy_id, ok_id) = await _records(pool, tenant, workflow, ["2125550101", "2125550102"])
    clock = Clock(NOON)
    worker = FakeWorker(broker, {"+12125550101": ["busy"]}, clock)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    sub = await broker.consume_jobs(worker, prefetch=10)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
    try:
        for attempt in range(3):
            result = await scheduler.tick()
            assert result.published == (2 if attempt == 0 else 1)
            await _settle(
                pool,
                "SELECT count(*) = 0 FROM calls WHERE record_id = $1 AND state <> 'ended'",
                busy_id,
            )
            clock.now += 700  # past the retry delay (600 s after the call ended)
        await _settle(pool, "SELECT status = 'completed' FROM records WHERE id = $1", busy_id)
    finally:
        await sub.cancel()
        await consumer.close()
    busy = await pool.fetchrow("SELECT * FROM records WHERE id = $1", busy_id)
    assert (busy["attempts"], busy["outcome"]) == (3, "busy")
    ok = await pool.fetchrow("SELECT * FROM records WHERE id = $1", ok_id)
    assert (ok["status"], ok["attempts"]) == ("completed", 1)
    dialled = [j.phone_e164 for j in worker.jobs]
    assert dialled.count("+12125550101") == 3 and dialled.count("+12125550102") == 1
    assert worker.jobs[0].handler["text"].startswith("Hi P0")
    events = await pool.fetch(
        "SELECT event_type, payload FROM outbox WHERE tenant_id = $1 ORDER BY id", tenant.id
    )
    kinds = [e["event_type"] for e in events]
    assert kinds.count("call.completed") == 4 and kinds.count("record.completed") == 2
    completed = [e["payload"]["data"] for e in events if e["event_type"] == "call.completed"]
    assert {c["meta"]["p"] for c in completed} == {"2125550101", "2125550102"}


async def test_window_dnc_and_pacing(pool: asyncpg.Pool, broker: Broker) -> None:
    tenant = await make_tenant(pool, "eng")
    workflow = await _workflow(pool, tenant)
    phones = [f"21255502{i:02d}" for i in range(6)]
    ids = await _records(pool, tenant, workflow, phones)
    await pool.execute(
        "INSERT INTO dnc (tenant_id, phone_e164) VALUES ($1, '+12125550200')", tenant.id
    )
    # 06:00 in New York: outside the window; nothing is dialled.
    clock = Clock(NOON - 4 * 3600)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
    result = await scheduler.tick()
    assert result.published == 0
    dnc = await pool.fetchrow("SELECT status FROM records WHERE id = $1", ids[0])
    assert dnc["status"] == "dnc"
    deferred = await pool.fetch(
        """SELECT extract(epoch FROM next_attempt_at)::float8 AS at FROM records
           WHERE id = ANY($1::uuid[]) AND next_attempt_at > to_timestamp(0)""",
        ids[1:],
    )
    assert len(deferred) >= 2
    assert {row["at"] for row in deferred} == {NOON - 3600}  # 09:00 in New York
    # Inside the window: three seats, progressive pacing: three calls at most.
    clock.now = NOON
    result = await scheduler.tick()
    assert result.published == 3
    result = await scheduler.tick()
    assert result.published == 0  # seats still busy (nobody ended the calls)
    assert await broker.queue_depth(broker.dial_queue) == 3


async def test_lost_worker_calls_are_closed_and_retried_by_policy(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "eng")
    settings = {**SETTINGS, "retry": {"worker_lost": {"delay_s": 60, "max_attempts": 2}}}
    workflow = await _workflow(pool, tenant, settings)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550301"])
    clock = Clock(NOON)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    try:
        assert (await scheduler.tick()).published == 1
        call_id = await pool.fetchval("SELECT last_call_id FROM records WHERE id = $1", record_id)
        # A worker claims the call, beats once, then dies.
        dead = f"w-dead-{secrets.token_hex(3)}"
        await pool.execute(
            "INSERT INTO workers (id, last_seen_at) VALUES ($1, now() - interval '1 minute')", dead
        )
        await pool.execute(
            "UPDATE calls SET state = 'dialing', worker_id = $2 WHERE id = $1", call_id, dead
        )
        clock.now = NOON + 60
        assert (await scheduler.tick()).lost == 1
        await _settle(pool, "SELECT state = 'ended' FROM calls WHERE id = $1", call_id)
        call = await pool.fetchrow("SELECT disposition FROM calls WHERE id = $1", call_id)
        assert call["disposition"] == "worker_lost"
        record = await pool.fetchrow(
            "SELECT status, next_attempt_at FROM records WHERE id = $1", record_id
        )
        assert record["status"] == "queued"
        assert record["next_attempt_at"].timestamp() == pytest.approx(NOON + 60 + 60)
    finally:
        await consumer.close()


async def test_list_completion_writes_reference_shape(pool: asyncpg.Pool, broker: Broker) -> None:
    tenant = await make_tenant(pool, "eng")
    workflow = await _workflow(pool, tenant)
    list_id = new_id()
    await pool.execute(
        "INSERT INTO lists (id, tenant_id, workflow_id, name) VALUES ($1, $2, $3, 'L1')",
        list_id,
        tenant.id,
        workflow["id"],
    )
    await _records(pool, tenant, workflow, ["2125550401", "2125550402"], list_id)
    clock = Clock(NOON)
    worker = FakeWorker(broker, {}, clock)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    sub = await broker.consume_jobs(worker, prefetch=10)
    try:
        await Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id]).tick()
        await _settle(pool, "SELECT status = 'completed' FROM lists WHERE id = $1", list_id)
    finally:
        await sub.cancel()
        await consumer.close()
    payload = await pool.fetchval(
        "SELECT payload FROM outbox WHERE tenant_id = $1 AND event_type = 'list.completed'",
        tenant.id,
    )
    data = payload["data"]
    assert data["workflow_id"] == str(workflow["id"]) and data["workflow_name"] == "engine test"
    assert {row["node_type"] for row in data["rows"]} == {"call", "end"}
    assert {"nodetask_id", "task_id", "nodetask_name", "node_type"} == set(data["rows"][0])


async def test_predictive_budget_from_database_statistics(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "eng")
    settings = {**SETTINGS, "pacing": {"mode": "predictive", "seats": 2}}
    workflow = await _workflow(pool, tenant, settings)
    await _records(pool, tenant, workflow, [f"21255509{i:02d}" for i in range(40)])
    scheduler = Scheduler(pool, broker, clock=Clock(NOON), tenant_ids=[tenant.id])
    first = await scheduler.tick()
    # Knowing nothing yet, the pacer assumes everyone answers: no more than the seats.
    assert 1 <= first.published <= 2
    second = await scheduler.tick()
    assert second.published == 0  # the calls in flight already cover the seats


async def test_a_queued_call_no_node_explains_is_closed_not_fatal(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    tenant = await make_tenant(pool, "eng")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550302"])
    call_id = new_id()
    # A call row written by hand, without the node it was placed for, left unpublished.
    await pool.execute(
        """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164, state,
               created_at)
           VALUES ($1, $2, $3, $4, '+12125550302', 'queued', now() - interval '1 hour')""",
        call_id,
        tenant.id,
        record_id,
        workflow["id"],
    )
    scheduler = Scheduler(pool, broker, clock=Clock(NOON), tenant_ids=[tenant.id])
    result = await scheduler.tick()  # raised KeyError before
    assert result.republished == 0
    # Its record does not wait for it (not its last call): ended, never dialled.
    call = await pool.fetchrow("SELECT state, disposition FROM calls WHERE id = $1", call_id)
    assert (call["state"], call["disposition"]) == ("ended", "cancelled")


async def test_calls_never_dialled_are_no_samples_of_the_answer_rate(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at the claim for the DNC list, or expired waiting for the trunk: no
    INVITE went out, so they are neither unanswered dials nor held lines."""
    tenant = await make_tenant(pool, "rv")
    settings = {**SETTINGS, "pacing": {"mode": "predictive", "seats": 3}}
    workflow = await _workflow(pool, tenant, settings)
    (rid,) = await _records(pool, tenant, workflow, ["2125550777"])
    # 4 real answered calls, and 16 never dialled: 8 dnc-at-claim, 8 trunk_wait expiries
    rows = [("answered", None, 30)] * 4 + [("dnc", None, 0)] * 8
    rows += [("expired", "trunk_wait", 300)] * 8
    for disposition, reason, waited in rows:
        await pool.execute(
            """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164, state,
                   disposition, end_reason, dialing_at, answered_at, ended_at)
               VALUES ($1, $2, $3, $4, '+12125550777', 'ended', $5, $6,
                       now() - $7 * interval '1 second',
                       CASE WHEN $5 = 'answered' THEN now() - interval '20 seconds' END, now())""",
            new_id(),
            tenant.id,
            rid,
            workflow["id"],
            disposition,
            reason,
            float(waited),
        )
    seen: dict[str, Any] = {}
    real_pace = engine.pace

    def spy(policy: Any, stats: Any, now: Any, cancellable: Any) -> Any:
        seen["stats"] = stats
        return real_pace(policy, stats, now, cancellable)

    monkeypatch.setattr(engine, "pace", spy)
    sched = Scheduler(pool, MemoryBroker("rv"), clock=Clock(NOON), tenant_ids=[tenant.id])
    await sched.tick()
    s = seen["stats"]
    # Only 4 calls were ever dialled, all answered: the true answer rate is 1.0.
    assert s.answer_samples == 4 and s.answer_rate == 1.0
